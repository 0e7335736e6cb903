import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection to the broker opened and closed again before libmosquitto's own connect.
///
/// `mosquitto_connect_bind_v5` (the only call that carries CONNECT properties, the session expiry
/// among them) connects TCP in blocking mode: to an address that drops every packet it waits for
/// the kernel's SYN retries, about two minutes, and neither a stop nor a move to the next broker
/// can happen meanwhile. This check connects without blocking, at most `timeout`, looking at
/// `stopRequested` every 100 ms, so a broker that never answers costs `timeout` (then the next
/// broker), and a stop costs nothing. After it succeeds libmosquitto's connect finds the broker
/// answering; the TLS handshake and the CONNACK are waited for in the loop, which notices stops.
/// The price: one extra short TCP connection per connection attempt (the broker logs it).
enum ConnectCheck {
    static func reach(host: String, port: Int, timeout: Duration, stopRequested: () -> Bool) -> MQTTError? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let list else {
            return .lookupFailed("\(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        let deadline = ContinuousClock.now + timeout
        var failure: MQTTError = .connectionRefused("\(host):\(port)")
        var node: UnsafeMutablePointer<addrinfo>? = list
        while let address = node, !stopRequested() {
            node = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                failure = .system(errno: errno, String(cString: strerror(errno)))
                continue
            }
            defer { close(fd) }
            if connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 { return nil }
            guard errno == EINPROGRESS else {
                failure = .connectionRefused("\(host):\(port): \(String(cString: strerror(errno)))")
                continue
            }
            while true {
                if stopRequested() { return .shutdown }
                let left = deadline - ContinuousClock.now
                if left <= .zero {
                    return .timeout("no answer from \(host):\(port) within \(timeout)")
                }
                var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let slice = Int32(min(100, max(1, left.components.seconds * 1_000 + left.components.attoseconds / 1_000_000_000_000_000)))
                let ready = poll(&poller, 1, slice)
                if ready < 0 && errno != EINTR { return .system(errno: errno, String(cString: strerror(errno))) }
                guard ready > 0 else { continue }
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                if error == 0 { return nil }
                failure = .connectionRefused("\(host):\(port): \(String(cString: strerror(error)))")
                break
            }
        }
        return stopRequested() ? .shutdown : failure
    }
}
