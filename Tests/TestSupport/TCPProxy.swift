import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP proxy in front of a broker, so that a test can cut a client's
/// connection the way a network failure or a killed process would: no
/// DISCONNECT packet, just a dead socket.
public final class TCPProxy: @unchecked Sendable {
    public let port: Int
    private let upstreamPort: Int
    private let listener: Int32
    private let lock = NSLock()
    private var sockets: Set<Int32> = []
    private var stopped = false
    private var refusing = false
    private var frozen = false

    public init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let (fd, port) = try listenOnLoopback()
        self.listener = fd
        self.port = port
        let thread = Thread { [weak self] in self?.acceptLoop() }
        thread.start()
    }

    public var url: String { "mqtt://127.0.0.1:\(port)" }

    /// How many client connections are open through the proxy.
    public var openConnections: Int { lock.withLock { sockets.count / 2 } }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(upstreamPort).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            let accepted = lock.withLock { () -> Bool in
                guard !stopped, !refusing, connected else { return false }
                sockets.insert(client)
                sockets.insert(upstream)
                return true
            }
            guard accepted else {
                close(client)
                close(upstream)
                continue
            }
            let pair = Pair()
            Thread { [weak self] in self?.pump(from: client, to: upstream, pair) }.start()
            Thread { [weak self] in self?.pump(from: upstream, to: client, pair) }.start()
        }
    }

    /// The two directions of one connection: its descriptors are closed only when both are
    /// done. The next `accept` reuses a closed number at once, and a late `shutdown` or `recv`
    /// on it by the other direction's thread cut the next connection (seen as a client whose
    /// new connection was lost right after CONNACK, and its reconnect backoff doubled).
    private final class Pair: @unchecked Sendable {
        var finished = 0  // guarded by the proxy's lock
    }

    private func pump(from source: Int32, to destination: Int32, _ pair: Pair) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(source, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            // Frozen: hold what arrived (a link that stalls without closing) until thawed or cut.
            while lock.withLock({ frozen && sockets.contains(source) }) { usleep(5_000) }
            var sent = 0
            while sent < n {
                let m = buffer.withUnsafeBytes { send(destination, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                if m <= 0 { break }
                sent += m
            }
            if sent < n { break }
        }
        lock.withLock {
            shutdown(source, Int32(SHUT_RDWR))
            shutdown(destination, Int32(SHUT_RDWR))
            pair.finished += 1
            guard pair.finished == 2 else { return }
            sockets.remove(source)
            sockets.remove(destination)
            close(source)
            close(destination)
        }
    }

    /// Cuts every open connection at once, without any MQTT goodbye; new
    /// connections are still accepted.
    public func cutAll() {
        let open = lock.withLock { sockets }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Cuts every connection and closes new ones at once, like a link that is down;
    /// `restore()` lets connections through again.
    public func takeDown() {
        lock.withLock { refusing = true }
        cutAll()
    }

    public func restore() {
        lock.withLock { refusing = false }
    }

    /// Stops forwarding in both directions without closing anything (a stalled link):
    /// what is sent meanwhile waits in the proxy. `thaw()` forwards it; `cutAll()` drops it.
    public func freeze() { lock.withLock { frozen = true } }

    public func thaw() { lock.withLock { frozen = false } }

    /// Cuts everything and stops listening.
    public func stop() {
        let open = lock.withLock { () -> Set<Int32> in
            stopped = true
            return sockets
        }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    deinit { if !stopped { stop() } }
}
