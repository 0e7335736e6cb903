public import Foundation

/// A throwaway PKI made with openssl for TLS tests: a CA, a server certificate
/// for 127.0.0.1/localhost and a client certificate, all in one temporary directory.
public struct TestPKI: Sendable {
    public let directory: URL
    public var caCertificate: String { directory.appendingPathComponent("ca.crt").path }
    public var serverCertificate: String { directory.appendingPathComponent("server.crt").path }
    public var serverKey: String { directory.appendingPathComponent("server.key").path }
    public var clientCertificate: String { directory.appendingPathComponent("client.crt").path }
    public var clientKey: String { directory.appendingPathComponent("client.key").path }
    /// A second, unrelated CA: a client trusting only this one must refuse the server.
    public var otherCACertificate: String { directory.appendingPathComponent("other-ca.crt").path }

    /// Makes the PKI without holding a cooperative thread while openssl runs (see `offload`).
    public static func make(clientCommonName: String = "test-client") async throws -> TestPKI {
        try await offload { try TestPKI(clientCommonName: clientCommonName) }
    }

    public init(clientCommonName: String = "test-client") throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("edgefleet-pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let openssl = try executable("openssl")
        func step(_ arguments: [String]) throws {
            let result = try run(openssl, arguments)
            guard result.status == 0 else {
                throw TestSupportError("openssl \(arguments.joined(separator: " ")) failed: \(result.stderr)")
            }
        }
        let d = directory.path
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try step(["req", "-x509"] + ec + ["-keyout", "\(d)/ca.key", "-out", "\(d)/ca.crt", "-days", "2", "-subj", "/CN=EdgeFleet Test CA"])
        try step(["req", "-x509"] + ec + ["-keyout", "\(d)/other-ca.key", "-out", "\(d)/other-ca.crt", "-days", "2", "-subj", "/CN=Unrelated CA"])
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
            .write(toFile: "\(d)/server.ext", atomically: true, encoding: .utf8)
        try "extendedKeyUsage=clientAuth\n".write(toFile: "\(d)/client.ext", atomically: true, encoding: .utf8)
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=\(clientCommonName)")] {
            try step(["req", "-new"] + ec + ["-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr", "-subj", subject])
            try step([
                "x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/ca.crt", "-CAkey", "\(d)/ca.key", "-CAcreateserial",
                "-out", "\(d)/\(name).crt", "-days", "2", "-extfile", "\(d)/\(name).ext",
            ])
        }
    }

    /// Another server certificate for 127.0.0.1 and localhost from the same CA (a renewal):
    /// `NAME.crt` and `NAME.key` in the directory; returns their paths.
    public func issueServerCertificate(_ name: String) throws -> (certificate: String, key: String) {
        let openssl = try executable("openssl")
        let d = directory.path
        for arguments in [
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/ca.crt", "-CAkey", "\(d)/ca.key", "-CAcreateserial", "-out", "\(d)/\(name).crt", "-days", "2", "-extfile", "\(d)/server.ext"],
        ] {
            let result = try run(openssl, arguments)
            guard result.status == 0 else { throw TestSupportError("openssl \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        }
        return ("\(d)/\(name).crt", "\(d)/\(name).key")
    }

    public func remove() { try? FileManager.default.removeItem(at: directory) }
}
