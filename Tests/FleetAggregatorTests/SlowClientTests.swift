import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Slow HTTP clients (slowloris) against the real aggregator process, whose descriptor limit
/// is this machine's (20,000 here).
@Suite("slow HTTP clients", .timeLimit(.minutes(3)))
struct SlowClientTests {
    /// Before: 21,000 such connections against the aggregator's 20,000 descriptors made `/healthz`
    /// hang. Here the same ratio at a tenth of the scale: a limit of 2,000 descriptors, 2,100 connections.
    @Test("more slow connections than the aggregator has descriptors: /healthz still answers; the oldest slow ones are closed to make room")
    func slowloris() async throws {
        let server = try await ServedAggregator.start(headerTimeout: "60s", descriptorLimit: 2_000)
        defer { server.stop() }
        let (port, aggregator) = (server.port, server.aggregator)
        let opened = try await offload { try SlowClients(port: port, count: 2_100) }
        defer { opened.close() }
        #expect(opened.count == 2_100, "opened only \(opened.count)")
        // The aggregator answers a new client while they hang on, again and again.
        for _ in 0..<3 {
            let started = ContinuousClock.now
            let health = try await HTTP.get(port: port, "/healthz")
            #expect(health.status == 200)
            #expect(ContinuousClock.now - started < .seconds(5), "/healthz took \(ContinuousClock.now - started)")
            try await Task.sleep(for: .milliseconds(300))
        }
        let metrics = try await HTTP.get(port: port, "/metrics").text
        func value(_ prefix: String) -> Double? {
            metrics.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        let evicted = value(#"edgefleet_http_connections_closed_total{reason="evicted"}"#) ?? 0
        let open = value("edgefleet_http_connections ") ?? .infinity
        // The cap is the limit less 512 (for the broker, SQLite, executors): 1,488.
        #expect(evicted >= 600, "only \(evicted) slow connections closed to make room")
        #expect(open <= 1_489, "\(open) connections open: above the cap")
        #expect(aggregator.process.isRunning)
    }

    @Test("a connection that does not finish its request head within the header timeout is closed")
    func headerTimeout() async throws {
        let server = try await ServedAggregator.start(headerTimeout: "1s")
        defer { server.stop() }
        let port = server.port
        let slow = try await offload { try SlowClients(port: port, count: 1) }
        defer { slow.close() }
        let closedAfter = try await offload { try slow.waitForClose(index: 0, timeout: 10) }
        #expect(closedAfter != nil, "the slow connection was never closed")
        #expect((closedAfter ?? 0) >= 0.9, "closed before the header timeout: \(closedAfter ?? 0) s")
        // A prompt client on a kept-alive connection is served as usual.
        #expect(try await HTTP.get(port: port, "/healthz").status == 200)
        let metrics = try await HTTP.get(port: port, "/metrics").text
        #expect(metrics.contains(#"edgefleet_http_connections_closed_total{reason="slow-head"} 1"#))
    }
}

/// A broker and an aggregator process answering HTTP on a port of its own, reads open.
struct ServedAggregator {
    let broker: MosquittoBroker
    let directory: String
    let port: Int
    let aggregator: AggregatorProcess

    static func start(headerTimeout: String, descriptorLimit: Int? = nil) async throws -> ServedAggregator {
        let broker = try await MosquittoBroker.start()
        let directory = try temporaryDirectory("edgefleet-slow")
        let port = try freeLoopbackPort()
        let aggregator = try AggregatorProcess(
            broker: broker, database: directory + "/fleet.sqlite",
            flags: Short.flags + ["--http", "127.0.0.1:\(port)", "--public-reads", "true", "--http-header-timeout", headerTimeout],
            descriptorLimit: descriptorLimit)
        let served = ServedAggregator(broker: broker, directory: directory, port: port, aggregator: aggregator)
        do {
            try await withTimeout(.seconds(20), "the aggregator to answer") {
                while (try? await HTTP.get(port: port, "/healthz"))?.status != 200 { try await Task.sleep(for: .milliseconds(100)) }
            }
        } catch {
            served.stop()
            throw error
        }
        return served
    }

    func stop() {
        aggregator.terminate()
        broker.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// TCP connections to 127.0.0.1:`port` that each send the start of a request head and never finish it.
final class SlowClients: @unchecked Sendable {  // used from one test at a time
    private(set) var descriptors: [Int32] = []
    private let opened = ContinuousClock.now
    var count: Int { descriptors.count }

    init(port: Int, count: Int) throws {
        descriptors.reserveCapacity(count)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let partial = Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8)
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw TestSupportError("socket: \(String(cString: strerror(errno))) after \(descriptors.count)") }
            // Closing sends a reset: no TIME_WAIT left behind to hold ports other tests need.
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else {
                let message = String(cString: strerror(errno))
                Glibc.close(fd)
                throw TestSupportError("connect: \(message) after \(descriptors.count)")
            }
            _ = partial.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            descriptors.append(fd)
        }
    }

    /// Seconds from opening until the server closed connection `index`, or nil if it did not within `timeout`.
    func waitForClose(index: Int, timeout: Double) throws -> Double? {
        var descriptor = pollfd(fd: descriptors[index], events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, Int32(timeout * 1000))
        guard ready == 1 else { return nil }
        var byte: UInt8 = 0
        let n = recv(descriptors[index], &byte, 1, 0)
        guard n <= 0 else { return nil }  // data, not a close
        return (ContinuousClock.now - opened).secondsValue
    }

    func close() {
        for fd in descriptors { Glibc.close(fd) }
        descriptors.removeAll()
    }
}
