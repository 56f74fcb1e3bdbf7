import Metrics
import Prometheus
import VMExecService

/// The daemon's Prometheus metrics: swift-metrics bootstrapped once per
/// process with a Prometheus backend (the core counts jobs through
/// swift-metrics), gauges of the daemon's load set at each scrape.
enum DaemonMetrics {
    static let registry = PrometheusCollectorRegistry()

    /// Bootstraps swift-metrics the first time it is evaluated (once per process, as swift-metrics requires).
    static let bootstrapped: Void = {
        var factory = PrometheusMetricsFactory(registry: registry)
        let buckets: [Duration] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
            .seconds(60), .seconds(300),
        ]
        factory.defaultDurationHistogramBuckets = buckets
        MetricsSystem.bootstrap(factory)
    }()

    static func record(_ load: ServiceLoad) {
        Gauge(label: "vmexec_sandboxes").record(load.sandboxes)
        Gauge(label: "vmexec_guests_running").record(load.guestsRunning)
        Gauge(label: "vmexec_guest_memory_mib").record(load.guestMemoryMiB)
        Gauge(label: "vmexec_jobs_queued").record(load.jobsQueued)
        Gauge(label: "vmexec_jobs_running").record(load.jobsRunning)
        Gauge(label: "vmexec_pool_guests").record(load.poolSize)
        Gauge(label: "vmexec_pool_taken").record(load.poolTaken)
    }

    /// Everything, in Prometheus' text format.
    static func text() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
