import FleetCore
import FleetQueue
public import Hummingbird
public import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An API error with its status, answered as `{"error": {"code": ..., "message": ...}}`.
struct APIError: HTTPResponseError {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var workaround: String?
    var headers: HTTPFields = [:]

    static func badRequest(_ message: String) -> APIError { APIError(status: .badRequest, code: "bad-request", message: message) }
    static func notFound(_ message: String) -> APIError { APIError(status: .notFound, code: "not-found", message: message) }

    init(status: HTTPResponse.Status, code: String, message: String, workaround: String? = nil, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.workaround = workaround
        self.headers = headers
    }

    init(_ error: QueueError) {
        switch error.category {
        case .invalid: self.init(status: .badRequest, code: "bad-request", message: error.message)
        case .notQueueable: self.init(status: .unprocessableContent, code: "not-queueable", message: error.message, workaround: error.workaround)
        case .invalidParameter: self.init(status: .unprocessableContent, code: "invalid-parameter", message: error.message)
        case .conflict: self.init(status: .conflict, code: "conflict", message: error.message)
        case .notFound: self.init(status: .notFound, code: "not-found", message: error.message)
        case .unavailable: self.init(status: .serviceUnavailable, code: "unavailable", message: error.message)
        }
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = JSONBody.response(APIErrorBody(code: code, message: message, workaround: workaround), status: status)
        for field in headers { response.headers.append(field) }
        return response
    }
}

/// JSON responses through `FleetJSON` (the contract's dates and sorted keys).
enum JSONBody {
    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let bytes = (try? FleetJSON.encode(value)) ?? Array(#"{"error":{"code":"internal","message":"cannot encode the response"}}"#.utf8)
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// Reads and decodes a JSON body of at most 64 KiB; a bad one is a 400 naming the problem.
    static func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: 64 * 1024)
        } catch {
            throw APIError(status: .contentTooLarge, code: "bad-request", message: "the body is larger than 64 KiB")
        }
        let bytes = Array(buffer.readableBytesView)
        if bytes.isEmpty { throw APIError.badRequest("a JSON body is required") }
        do {
            return try FleetJSON.decode(T.self, from: bytes)
        } catch let error as DecodingError {
            throw APIError.badRequest("the body is not valid: \(Self.describe(error))")
        } catch {
            throw APIError.badRequest("the body is not valid JSON: \(error)")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [any CodingKey]) -> String { keys.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let context): return "'\(path(context.codingPath + [key]))' is required"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "'\(path(context.codingPath))' has the wrong type (\(context.debugDescription))"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not JSON (\(context.debugDescription))" : "'\(path(context.codingPath))': \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

/// A request's query string, percent-decoded, with unknown parameters refused (a typo such
/// as `?stat=queued` must not silently list everything).
struct Query {
    var values: [String: String] = [:]

    init(_ request: Request, allowed: Set<String>? = nil) throws(APIError) {
        for pair in (request.uri.query ?? "").split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = Self.decode(parts[0])
            let value = parts.count > 1 ? Self.decode(parts[1]) : ""
            if let allowed, !allowed.contains(name) {
                throw .badRequest("unknown query parameter '\(name)'; this route takes \(allowed.sorted().joined(separator: ", "))")
            }
            values[name] = value
        }
    }

    subscript(_ name: String) -> String? { values[name].flatMap { $0.isEmpty ? nil : $0 } }

    static func decode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Percent-encodes a query value (everything but unreserved characters).
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if SiteLabels.alnum(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "~") {
                out.append(Character(UnicodeScalar(byte)))
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }

    func limit(default fallback: Int = 100, maximum: Int = 1000) throws(APIError) -> Int {
        guard let text = self["limit"] else { return fallback }
        guard let n = Int(text), (1...maximum).contains(n) else { throw .badRequest("limit: expected a number from 1 to \(maximum), got '\(text)'") }
        return n
    }

    /// `window`: a history window, a duration (`90d`, `36h`) longer than zero.
    func window(default fallback: Duration) throws(APIError) -> Duration {
        try Self.window(self["window"], default: fallback)
    }

    static func window(_ text: String?, default fallback: Duration) throws(APIError) -> Duration {
        guard let text else { return fallback }
        guard let length = try? DurationFormat.parse(text), length > .zero else {
            throw APIError.badRequest("window: a duration such as 90d or 36h, got '\(text.prefix(64))'")
        }
        return length
    }

    /// `name`: a whole number in `range`.
    func count(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws(APIError) -> Int {
        guard let text = self[name] else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw APIError.badRequest("\(name): a whole number from \(range.lowerBound) to \(range.upperBound), got '\(text.prefix(64))'")
        }
        return value
    }

    /// `name`: an instant, RFC 3339 or a duration meaning that long before `now` (`since=1h`).
    func instant(_ name: String, now: Date) throws(APIError) -> Date? {
        guard let text = self[name] else { return nil }
        if let date = RFC3339.parse(text) { return date }
        if let ago = try? DurationFormat.parse(text) { return now.addingTimeInterval(-ago.secondsValue) }
        throw APIError.badRequest("\(name): an RFC 3339 instant or a duration before now (1h, 7d), got '\(text.prefix(64))'")
    }

    func site() throws(APIError) -> SiteID? {
        guard let text = self["site"] else { return nil }
        do { return try SiteID(text) } catch { throw .badRequest("site: \(error.description)") }
    }

    /// `selector`: an equality-based label selector (`region=north,tier!=lab`); empty when absent.
    func selector() throws(APIError) -> LabelSelector {
        guard let text = self["selector"] else { return LabelSelector() }
        do { return try LabelSelector(parsing: text) } catch { throw .badRequest(error.description) }
    }

    func mode() throws(APIError) -> ConnectivityMode? {
        guard let text = self["mode"] else { return nil }
        guard let mode = ConnectivityMode(rawValue: text) else {
            throw .badRequest("mode: unknown '\(text)'; one of \(ConnectivityMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return mode
    }

    func liveness() throws(APIError) -> Liveness? {
        guard let text = self["liveness"] else { return nil }
        guard let value = Liveness(rawValue: text) else {
            throw .badRequest("liveness: unknown '\(text)'; one of \(Liveness.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    func kind() throws(APIError) -> OperationKind? {
        guard let text = self["kind"] else { return nil }
        guard let kind = OperationKind(rawValue: text) else { throw .badRequest("kind: unknown '\(text)'") }
        return kind
    }

    /// `state=queued` or `state=queued,blocked`.
    func states() throws(APIError) -> Set<OperationState>? {
        guard let text = self["state"] else { return nil }
        var states = Set<OperationState>()
        for part in text.split(separator: ",") {
            guard let state = OperationState(rawValue: String(part)) else {
                throw .badRequest("state: unknown '\(part)'; one of \(OperationState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            states.insert(state)
        }
        return states
    }
}

/// The `Cookie` header's pairs.
func cookies(of request: Request) -> [String: String] {
    var result: [String: String] = [:]
    for header in request.headers[values: .cookie] {
        for pair in header.split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            result[parts[0].trimmed] = parts[1].trimmed
        }
    }
    return result
}

/// Percent-encodes everything but letters and digits (a cookie value).
func percentEncoded(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
        }
    }
    return out
}

/// The request context of every route: Hummingbird's core, and the client's address (for the
/// audit log and for slowing down an address that keeps presenting unknown tokens).
public struct FleetRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client's IP address without the port (`unknown` when the channel has none).
    var clientAddress: String { remoteAddress?.ipAddress ?? "unknown" }
}
