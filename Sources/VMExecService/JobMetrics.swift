import Foundation
import Metrics

/// What the daemon's core counts, through swift-metrics (the daemon
/// bootstraps a Prometheus backend; elsewhere these go nowhere).
enum JobMetrics {
    /// A job ended: counted by its final state, its run time recorded.
    static func ended(_ jobID: String, in store: JobStore, after duration: Duration) {
        guard let record = try? store.job(jobID), record.state.isFinal else { return }
        Counter(label: "vmexec_jobs_total", dimensions: [("state", record.state.rawValue)]).increment()
        if record.started != nil {
            Metrics.Timer(label: "vmexec_job_duration_seconds").recordNanoseconds(nanoseconds(duration))
        }
    }

    /// A job started after waiting this long in its sandbox's queue.
    static func queueWait(since created: Date) {
        Metrics.Timer(label: "vmexec_job_queue_seconds").recordSeconds(max(0, Date().timeIntervalSince(created)))
    }

    static func nanoseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }
}
