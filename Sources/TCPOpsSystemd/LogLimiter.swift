// One kind of log line that a peer or a local user can cause again and again (a refused control
// client, a rejected PROXY source, a full listener): at most one line per interval. The first is
// written at once; the ones held back meanwhile are counted, and one line at the end of the
// interval (a timer on the loop) says how many there were, with the first of them. Nothing goes
// unsaid, and a flood costs the journal a line every few seconds. One limiter per kind of line
// and per loop (it is not shared between threads).
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsLoop

package final class LogLimiter {
    private unowned let loop: EventLoop
    private let logger: Logger
    private let interval: UInt64
    /// Lines before this time are held back (monotonic ns).
    private var quietUntil: UInt64 = 0
    private var held = 0
    /// The first line held back in this interval: said with the count.
    private var first: (level: LogLevel, message: String, id: MessageID?, fields: [Logger.Field])?
    private var summaryArmed = false
    private var closed = false
    /// Every line asked for, written or held.
    private(set) var total: UInt64 = 0

    package init(loop: EventLoop, logger: Logger, interval: UInt64 = 5_000_000_000) {
        self.loop = loop
        self.logger = logger
        self.interval = interval
    }

    /// Logs the line, or counts it when one was written less than `interval` ago. The message and
    /// fields are made only for the lines that are written (or the first one held).
    package func log(_ level: LogLevel, _ message: @autoclosure () -> String, id: MessageID? = nil,
             _ fields: @autoclosure () -> [Logger.Field] = []) {
        total += 1
        let now = loop.now
        if now >= quietUntil && !summaryArmed {
            quietUntil = now + interval
            logger.log(level, message(), id: id, fields() + [("TCPOPS_OCCURRENCES", String(total))])
            return
        }
        held += 1
        if first == nil { first = (level, message(), id, fields()) }
        guard !summaryArmed else { return }
        summaryArmed = true
        loop.timers.schedule(at: max(quietUntil, now)) { [weak self] in self?.summarize() }
    }

    private func summarize() {
        summaryArmed = false
        guard !closed, held > 0, let f = first else { return }
        logger.log(f.level, "\(f.message) (and \(held - 1) more like it in the last \((Double(interval) / 1e9).secondsText))",
                   id: f.id, f.fields + [("TCPOPS_SUPPRESSED", String(held - 1)), ("TCPOPS_OCCURRENCES", String(total))])
        held = 0
        first = nil
        quietUntil = loop.now + interval
    }

    /// The loop is going away: nothing more is said.
    package func close() { closed = true }
}
