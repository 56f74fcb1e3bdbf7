import Synchronization

/// How a machine (or one of its processes) ended, set once, and the tasks
/// waiting for it, each with a deadline of its own.
///
/// Both machines learn of their end on a thread of their own (waitpid, or
/// libvirt's event loop) and wake every waiter at once; a waiter whose
/// deadline passes is woken alone.
final class EndingSignal<Ending: Sendable>: Sendable {
    private struct State {
        var ending: Ending?
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    init() {}

    /// How it ended, or nil while it runs.
    var ending: Ending? { state.withLock { $0.ending } }

    /// Records the ending and wakes every waiter. Returns false, changing
    /// nothing, when an ending was recorded already.
    @discardableResult
    func end(_ ending: Ending) -> Bool {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>]? in
            guard s.ending == nil else { return nil }
            s.ending = ending
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        guard let woken else { return false }
        for w in woken { w.resume() }
        return true
    }

    /// Waits until it has ended, at most `timeout`; returns the ending.
    func wait(timeout: Duration) async -> Ending? {
        if let e = ending { return e }
        // The waiter's id once added, and whether the timer fired before that.
        let slot = Mutex<(id: Int?, expired: Bool)>((nil, false))
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if let mine = slot.withLock({ s in
                s.expired = true
                return s.id
            }) {
                self.wake(mine)
            }
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let (mine, endedAlready) = state.withLock { s -> (Int, Bool) in
                s.nextID += 1
                if s.ending == nil { s.waiters[s.nextID] = c }
                return (s.nextID, s.ending != nil)
            }
            if endedAlready {
                c.resume()
                return
            }
            // The timer may have fired before this waiter was added.
            if slot.withLock({ s in
                s.id = mine
                return s.expired
            }) {
                wake(mine)
            }
        }
        timer.cancel()
        return ending
    }

    private func wake(_ id: Int) {
        state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
    }
}
