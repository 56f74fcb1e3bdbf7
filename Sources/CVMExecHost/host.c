/*
 * host.c - KVM probe and TSC measurement (see vmexec_host.h).
 *
 * The probe forks because a broken KVM can leave KVM_RUN stuck in the
 * kernel; only a separate process can be abandoned safely. The child does
 * nothing but syscalls before _exit, so forking a threaded host is safe.
 */
#define _GNU_SOURCE
#include "vmexec_host.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <linux/kvm.h>

static int run_hlt_guest(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return VMEXEC_KVM_ABSENT;
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        return VMEXEC_KVM_BROKEN;
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        return VMEXEC_KVM_BROKEN;
    uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return VMEXEC_KVM_BROKEN;
    mem[0] = 0xf4; /* hlt */
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0x1000, .memory_size = 0x1000, .userspace_addr = (uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return VMEXEC_KVM_BROKEN;
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vcpu < 0 || size <= 0)
        return VMEXEC_KVM_BROKEN;
    struct kvm_run *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs sregs;
    if (run == MAP_FAILED || ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        return VMEXEC_KVM_BROKEN;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        return VMEXEC_KVM_BROKEN;
    if (ioctl(vcpu, KVM_RUN, 0) < 0)
        return VMEXEC_KVM_BROKEN;
    return run->exit_reason == KVM_EXIT_HLT ? VMEXEC_KVM_USABLE : VMEXEC_KVM_BROKEN;
}

int vmexec_kvm_probe(int timeout_ms)
{
    if (access("/dev/kvm", R_OK | W_OK) != 0)
        return VMEXEC_KVM_ABSENT;
    pid_t pid = fork();
    if (pid < 0)
        return VMEXEC_KVM_BROKEN;
    if (pid == 0)
        _exit(run_hlt_guest());
    for (int waited = 0; waited <= timeout_ms; waited += 2) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : VMEXEC_KVM_BROKEN;
        if (r < 0 && errno != EINTR)
            return VMEXEC_KVM_BROKEN;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return VMEXEC_KVM_HUNG;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

long vmexec_tsc_khz(void)
{
    uint64_t t0 = monotonic_ns(), c0 = __builtin_ia32_rdtsc();
    struct timespec ts = {0, 20000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    uint64_t t1 = monotonic_ns(), c1 = __builtin_ia32_rdtsc();
    if (t1 <= t0)
        return 0;
    return (long)((c1 - c0) * 1000000ull / (t1 - t0));
}

#else

int vmexec_kvm_probe(int timeout_ms)
{
    (void)timeout_ms;
    return access("/dev/kvm", R_OK | W_OK) != 0 ? VMEXEC_KVM_ABSENT : VMEXEC_KVM_UNSUPPORTED;
}

long vmexec_tsc_khz(void)
{
    return 0;
}

#endif
