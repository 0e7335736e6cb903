import NIOCore
import NIOHTTPTypes
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Keeps slow or idle clients from taking the HTTP server's descriptors: a connection must
/// finish sending a request head within `headTimeout` (after it opens, and after each
/// response), or it is closed; and at most `capacity` connections are open, below the
/// process's descriptor limit: when a new one would pass it, the connection that has waited
/// longest for a request head is closed to make room. New clients (a probe of `/healthz`)
/// are thus always accepted; 21,000 slow connections exhausted the descriptors before and
/// made `/healthz` hang.
final class ConnectionGuard: Sendable {
    let capacity: Int
    let headTimeout: TimeAmount

    private struct State {
        var open = 0
        var next: UInt64 = 0
        /// Connections waiting for a request head, by when they started waiting (oldest first by key).
        var waiting: [UInt64: any Channel] = [:]
        var closedSlow: UInt64 = 0
        var evicted: UInt64 = 0
    }
    private let state = Mutex(State())

    init(capacity: Int, headTimeout: TimeAmount) {
        self.capacity = max(16, capacity)
        self.headTimeout = headTimeout
    }

    /// The cap for a process whose descriptor limit is `limit`: room for the rest of the
    /// process (broker, SQLite, executors' pipes) and at most 10,000.
    static func defaultCapacity() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1_000 }
        let soft = Int(clamping: min(limit.rlim_cur, 1 << 20))
        return max(16, min(10_000, soft - 512))
    }

    /// Connections closed for a slow head, and evicted to make room.
    var counts: (slow: UInt64, evicted: UInt64, open: Int) { state.withLock { ($0.closedSlow, $0.evicted, $0.open) } }

    func handler() -> SlowClientHandler { SlowClientHandler(guard: self) }

    fileprivate func opened() -> (any Channel)? {
        state.withLock { s in
            s.open += 1
            guard s.open > capacity, let oldest = s.waiting.keys.min() else { return nil }
            s.evicted += 1
            return s.waiting.removeValue(forKey: oldest)
        }
    }

    fileprivate func closed(ticket: UInt64?) {
        state.withLock { s in
            s.open -= 1
            if let ticket { s.waiting[ticket] = nil }
        }
    }

    fileprivate func waiting(_ channel: any Channel) -> UInt64 {
        state.withLock { s in
            s.next += 1
            s.waiting[s.next] = channel
            return s.next
        }
    }

    fileprivate func served(ticket: UInt64) {
        _ = state.withLock { $0.waiting.removeValue(forKey: ticket) }
    }

    fileprivate func timedOut(ticket: UInt64) -> Bool {
        state.withLock { s in
            guard s.waiting.removeValue(forKey: ticket) != nil else { return false }
            s.closedSlow += 1
            return true
        }
    }
}

/// One connection's part of the `ConnectionGuard`, after HTTP decoding.
final class SlowClientHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let connections: ConnectionGuard
    private var ticket: UInt64?
    private var timer: Scheduled<Void>?
    private var counted = false

    init(guard connections: ConnectionGuard) {
        self.connections = connections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !counted else { return }
        counted = true
        if let evict = connections.opened() { evict.close(promise: nil) }
        awaitHead(context)
    }

    /// From now on a request head is due within the timeout.
    private func awaitHead(_ context: ChannelHandlerContext) {
        let ticket = connections.waiting(context.channel)
        self.ticket = ticket
        timer?.cancel()
        let channel = context.channel
        let connections = connections
        timer = context.eventLoop.scheduleTask(in: connections.headTimeout) {
            if connections.timedOut(ticket: ticket) { channel.close(promise: nil) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data), let ticket {
            connections.served(ticket: ticket)
            self.ticket = nil
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), context.channel.isActive { awaitHead(context) }  // keep-alive: the next head is due
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        if counted {
            connections.closed(ticket: ticket)
            counted = false
        }
        ticket = nil
        context.fireChannelInactive()
    }
}
