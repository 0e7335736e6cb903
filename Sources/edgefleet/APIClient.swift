import ArgumentParser
import AsyncHTTPClient
import CommandSupport
import FleetCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// A failure the CLI reports in one line and maps to its exit code (contract: 0 ok,
/// 1 failure, 2 usage, 3 not found, 4 refused by the server).
struct CLIFailure: Error, CustomStringConvertible {
    var code: Int32
    var description: String

    static func failure(_ message: String) -> CLIFailure { CLIFailure(code: EdgeFleetExit.failure, description: message) }
    static func usage(_ message: String) -> CLIFailure { CLIFailure(code: EdgeFleetExit.usage, description: message) }
}

/// The options every command that talks to the aggregator takes.
struct ClientOptions: ParsableArguments {
    @Option(help: "The aggregator's HTTP API (default $EDGEFLEET_SERVER or http://127.0.0.1:8080).") var server: String?
    @Option(help: "File holding the API token (default: $EDGEFLEET_TOKEN, or the file $EDGEFLEET_TOKEN_FILE).") var tokenFile: String?
    @Option(help: "table or json.") var output: OutputFormat = .table
    @Option(help: "For an https:// server: the CA that signed its certificate (PEM; default $EDGEFLEET_CA_FILE, else the system's CAs).")
    var caFile: String?

    func client() throws -> APIClient {
        let environment = ProcessInfo.processInfo.environment
        let text = server ?? environment["EDGEFLEET_SERVER"] ?? "http://127.0.0.1:8080"
        guard let url = URL(string: text.hasSuffix("/") ? String(text.dropLast()) : text), let scheme = url.scheme,
            scheme == "http" || scheme == "https", url.host != nil
        else {
            throw CLIFailure.usage("--server: expected a URL like http://127.0.0.1:8080, got '\(text)'")
        }
        var token: String?
        if let path = tokenFile ?? (environment["EDGEFLEET_TOKEN"] == nil ? environment["EDGEFLEET_TOKEN_FILE"] : nil) {
            guard let contents = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw CLIFailure.usage("--token-file: cannot read '\(path)'")
            }
            token = contents.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .first { !$0.isEmpty && !$0.hasPrefix("#") }
            if token == nil { throw CLIFailure.usage("--token-file: '\(path)' holds no token") }
        } else if let value = environment["EDGEFLEET_TOKEN"], !value.isEmpty {
            token = value
        }
        let ca = caFile ?? environment["EDGEFLEET_CA_FILE"]
        if let ca, !FileManager.default.isReadableFile(atPath: ca) { throw CLIFailure.usage("--ca-file: cannot read '\(ca)'") }
        return APIClient(base: url, token: token, http: try APIClient.httpClient(caFile: ca))
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// The aggregator's HTTP API, over HTTP or HTTPS (AsyncHTTPClient: it verifies the server with
/// the operator's CA or the system's).
struct APIClient {
    let base: URL
    let token: String?
    let http: HTTPClient

    /// Clients live as long as the process (a command is short, and a client must be shut down
    /// before it is released).
    private static let clients = Mutex([String: HTTPClient]())

    static func httpClient(caFile: String?) throws -> HTTPClient {
        try clients.withLock { clients in
            if let client = clients[caFile ?? ""] { return client }
            var tls = TLSConfiguration.makeClientConfiguration()
            if let caFile {
                do {
                    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
                } catch {
                    throw CLIFailure.usage("--ca-file: '\(caFile)' holds no PEM certificate (\(error))")
                }
            }
            var configuration = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow)
            configuration.timeout = .init(connect: .seconds(10), read: .seconds(30))
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            clients[caFile ?? ""] = client
            return client
        }
    }

    /// The operator's name for the queue's history: `user@host`.
    static let operatorName: String = {
        let environment = ProcessInfo.processInfo.environment
        let user = environment["USER"] ?? environment["LOGNAME"] ?? "operator"
        return "\(user)@\(ProcessInfo.processInfo.hostName)"
    }()

    func get<T: Decodable>(_ path: String, query: [(String, String?)] = [], as type: T.Type) async throws -> T {
        try await send("GET", path, query: query, body: nil as String?, as: type)
    }

    /// Pages through `/v1/events` oldest first, handing each page's events to `body`, until the
    /// stored events end or `limit` were handed over; returns the cursor left (nil: none left).
    @discardableResult
    func storedEvents(
        query: [(String, String?)], limit: Int = .max, _ body: ([FleetEvent]) throws -> Void
    ) async throws -> String? {
        var handed = 0
        var cursor: String?
        repeat {
            let page = try await get(
                "/v1/events", query: query + [("cursor", cursor), ("limit", "\(min(1000, limit - handed))")], as: EventPage.self)
            try body(page.events)
            handed += page.events.count
            cursor = page.nextCursor
        } while cursor != nil && handed < limit
        return cursor
    }

    func post<T: Decodable, B: Encodable>(_ path: String, body: B?, as type: T.Type) async throws -> T {
        try await send("POST", path, query: [], body: body, as: type)
    }

    func send<T: Decodable, B: Encodable>(_ method: String, _ path: String, query: [(String, String?)], body: B?, as type: T.Type)
        async throws -> T
    {
        var components = URLComponents(url: base.appendingPathComponent(path), resolvingAgainstBaseURL: false)!
        let items = query.compactMap { name, value in value.map { URLQueryItem(name: name, value: $0) } }
        if !items.isEmpty { components.queryItems = items }
        var request = HTTPClientRequest(url: components.url!.absoluteString)
        request.method = HTTPMethod(rawValue: method)
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "X-EdgeFleet-Operator", value: Self.operatorName)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.body = .bytes(ByteBuffer(bytes: try FleetJSON.encode(body)))
            request.headers.add(name: "Content-Type", value: "application/json")
        }
        let data: Data
        let status: Int
        do {
            let response = try await http.execute(request, timeout: .seconds(30))
            status = Int(response.status.code)
            data = Data(try await response.body.collect(upTo: 256 << 20).readableBytesView)
        } catch let error as NIOSSLError {
            throw CLIFailure.failure(
                "cannot reach the aggregator at \(base.absoluteString) over TLS: \(error). Give the CA that signed its certificate with --ca-file.")
        } catch let error as BoringSSLError {
            throw CLIFailure.failure(
                "cannot reach the aggregator at \(base.absoluteString) over TLS: \(error). Give the CA that signed its certificate with --ca-file.")
        } catch {
            throw CLIFailure.failure(
                "cannot reach the aggregator at \(base.absoluteString): \(error). Is it running? Point --server or EDGEFLEET_SERVER at it.")
        }
        guard (200..<300).contains(status) else { throw Self.failure(status: status, data: data, base: base) }
        do {
            return try FleetJSON.decode(T.self, from: Array(data))
        } catch {
            throw CLIFailure.failure("the aggregator at \(base.absoluteString) answered something this CLI cannot read (\(error)); is it the same version?")
        }
    }

    static func failure(status: Int, data: Data, base: URL) -> CLIFailure {
        let body = try? FleetJSON.decode(APIErrorBody.self, from: Array(data))
        var message = body?.error.message ?? "HTTP \(status)"
        if let workaround = body?.error.workaround { message += "\nworkaround: \(workaround)" }
        switch status {
        case 401:
            return CLIFailure(
                code: EdgeFleetExit.refused, description: "\(message): pass --token-file FILE or set EDGEFLEET_TOKEN (a principal's token: edgefleet token add)")
        case 403:
            return CLIFailure(code: EdgeFleetExit.refused, description: "refused: \(message)")
        case 404:
            return CLIFailure(code: EdgeFleetExit.notFound, description: message)
        case 400..<500:
            return CLIFailure(code: EdgeFleetExit.refused, description: "refused: \(message)")
        default:
            return CLIFailure(code: EdgeFleetExit.failure, description: "the aggregator at \(base.absoluteString) failed: \(message)")
        }
    }

    /// Every page of a paginated listing.
    func all<Page: Decodable>(
        _ path: String, query: [(String, String?)], as type: Page.Type, items: (Page) -> Int, next: (Page) -> String?, max: Int = .max
    ) async throws -> [Page] {
        var pages: [Page] = []
        var cursor: String?
        var count = 0
        repeat {
            let page = try await get(path, query: query + [("limit", "1000"), ("cursor", cursor)], as: type)
            pages.append(page)
            count += items(page)
            cursor = next(page)
        } while cursor != nil && count < max
        return pages
    }
}
