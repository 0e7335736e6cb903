public import Foundation
import FleetCore

#if canImport(Glibc)
import Glibc
#endif

/// A small HTTP/1.1 client over a plain socket, for tests that must see exactly what the
/// server answers: no redirects followed, no cookies kept, every header as sent.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header names in lower case; repeated headers joined with ", ".
    public var headers: [String: String]
    public var body: [UInt8]

    public var text: String { String(decoding: body, as: UTF8.self) }

    public func json() throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw TestSupportError("not a JSON object: \(text.prefix(300))")
        }
        return object
    }

    /// `error.code` of an API error body.
    public var errorCode: String? { ((try? json())?["error"] as? [String: Any])?["code"] as? String }
}

public enum HTTP {
    /// Sends one request to `127.0.0.1:port` and reads the whole answer (`Connection: close`),
    /// on a thread of its own: a test's blocking socket must not hold one of the few threads
    /// that run every task of the test process (the simulated sites' heartbeats among them).
    /// `source`: the loopback address to connect from (another client, as the server sees it).
    public static func request(
        _ method: String, port: Int, _ target: String, token: String? = nil, headers: [String: String] = [:], body: [UInt8]? = nil,
        source: String? = nil
    ) async throws -> HTTPResponse {
        do {
            return try await offload { try requestBlocking(method, port: port, target, token: token, headers: headers, body: body, source: source) }
        } catch is ClosedWithoutAnswer where method == "GET" || method == "HEAD" {
            // Under the whole suite on 2 cores the aggregator has, rarely, closed a connection
            // without answering (cause not found; see the design notes, "known flake"). A read is
            // tried once more, and says so; a change (POST) is never repeated here.
            FileHandle.standardError.write(Data("note: 127.0.0.1:\(port) closed a connection without an answer to GET \(target); trying again\n".utf8))
            try await Task.sleep(for: .milliseconds(200))
            return try await offload { try requestBlocking(method, port: port, target, token: token, headers: headers, body: body, source: source) }
        }
    }

    /// The server closed the connection without sending a byte.
    struct ClosedWithoutAnswer: Error, CustomStringConvertible {
        var description: String { "no HTTP head in 0 bytes (the server closed the connection without an answer)" }
    }

    static func requestBlocking(
        _ method: String, port: Int, _ target: String, token: String? = nil, headers: [String: String] = [:], body: [UInt8]? = nil,
        source: String? = nil
    ) throws -> HTTPResponse {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: \(errno)") }
        defer { close(fd) }
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw TestSupportError("bind to \(source): errno \(errno)") }
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestSupportError("connect to 127.0.0.1:\(port): errno \(errno)") }

        var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body {
            if headers.keys.contains(where: { $0.lowercased() == "content-type" }) == false { head += "Content-Type: application/json\r\n" }
            head += "Content-Length: \(body.count)\r\n"
        } else if method == "POST" {
            head += "Content-Length: 0\r\n"
        }
        let request = Array((head + "\r\n").utf8) + (body ?? [])
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestSupportError("send: errno \(errno)") }
            sent += n
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw TestSupportError("recv: errno \(errno)") }
            if n == 0 { break }
            received += buffer[0..<n]
        }
        if received.isEmpty { throw ClosedWithoutAnswer() }
        return try parse(received)
    }

    public static func get(port: Int, _ target: String, token: String? = nil, headers: [String: String] = [:]) async throws -> HTTPResponse {
        try await request("GET", port: port, target, token: token, headers: headers)
    }

    public static func post(port: Int, _ target: String, token: String? = nil, json: String? = nil, headers: [String: String] = [:])
        async throws -> HTTPResponse
    {
        try await request("POST", port: port, target, token: token, headers: headers, body: json.map { Array($0.utf8) })
    }

    static func parse(_ bytes: [UInt8]) throws -> HTTPResponse {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: separator) }) else {
            throw TestSupportError("no HTTP head in \(bytes.count) bytes")
        }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw TestSupportError("bad status line \(lines[0])") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        var body = Array(bytes[(end + 4)...])
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true { body = try dechunk(body) }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            guard let lineEnd = bytes[index...].indices.first(where: { bytes[$0] == 13 }) else { break }
            let sizeText = String(decoding: bytes[index..<lineEnd], as: UTF8.self).split(separator: ";")[0]
            guard let size = Int(sizeText, radix: 16) else { throw TestSupportError("bad chunk size '\(sizeText)'") }
            if size == 0 { break }
            let start = lineEnd + 2
            out += bytes[start..<min(bytes.count, start + size)]
            index = start + size + 2
        }
        return out
    }
}

/// Runs blocking work (a socket, `waitpid`, a process start that polls) on a thread of its
/// own and awaits it. The cooperative pool has one thread per core (two here) and every test of
/// the run shares it: one test blocking there stalls every in-process service of the others.
/// A dispatch queue is no better (its threads grow only after a second of being blocked).
public func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        onOwnThread { continuation.resume(with: Result { try body() }) }
    }
}

/// `run` without holding a cooperative thread while the command runs.
public func runAsync(_ executablePath: URL, _ arguments: [String], environment: [String: String]? = nil) async throws
    -> (status: Int32, stdout: String, stderr: String)
{
    try await offload { try run(executablePath, arguments, environment: environment) }
}
