import FleetCore
import Foundation
import TestSupport
import Testing

/// The API, the dashboard and /metrics over TLS: the CLI verifies with --ca-file, a certificate
/// renewed on disk is served without a restart, plain HTTP gets nothing.
@Suite("HTTPS", .timeLimit(.minutes(3)))
struct HTTPSTests {
    /// The serial number of the certificate the server presents now.
    static func servedSerial(port: Int, ca: String) async throws -> String {
        let openssl = try executable("openssl")
        let shown = try run(URL(fileURLWithPath: "/bin/sh"), ["-c", "\(openssl.path) s_client -connect 127.0.0.1:\(port) -CAfile \(ca) -verify_return_error </dev/null 2>/dev/null | \(openssl.path) x509 -noout -serial"])
        return shown.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("HTTPS: the CLI verifies the server with --ca-file (another CA is refused, naming the flag); a renewed certificate is served without a restart; plain HTTP is refused; the dashboard's cookie is Secure")
    func https() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let directory = try temporaryDirectory("edgefleet-https")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let certificate = directory + "/tls.crt"
        let key = directory + "/tls.key"
        try FileManager.default.copyItem(atPath: pki.serverCertificate, toPath: certificate)
        try FileManager.default.copyItem(atPath: pki.serverKey, toPath: key)
        let f = try await OperatorFixture.start(extra: ["--tls-cert", certificate, "--tls-key", key])
        defer { f.stop() }
        #expect(f.fleet.aggregator.output.contains("HTTP API listening on https://127.0.0.1:\(f.port)"))
        let server = ["--server", "https://127.0.0.1:\(f.port)"]

        // The CLI with the CA: works. Without it (the system's CAs) or with another CA: refused, saying what to do.
        let ok = try await f.cli(["status"] + server + ["--ca-file", pki.caCertificate])
        #expect(ok.status == 0, "\(ok.stderr)")
        let system = try await f.cli(["status"] + server)
        #expect(system.status == 1 && system.stderr.contains("--ca-file"), "\(system.stderr)")
        let other = try await f.cli(["status"] + server + ["--ca-file", pki.otherCACertificate])
        #expect(other.status == 1 && other.stderr.contains("--ca-file"), "\(other.stderr)")
        #expect(try await f.cli(["status"] + server + ["--ca-file", directory + "/none.pem"]).status == 2)

        // Plain HTTP on the TLS port: no HTTP answer at all.
        let plain = try? await HTTP.get(port: f.port, "/healthz")
        #expect(plain.map { $0.status == 0 || $0.status >= 400 } ?? true, "plain HTTP answered \(plain?.status ?? -1)")
        #expect(plain?.status != 200)

        // The dashboard's cookie is Secure under TLS (curl with the CA).
        let curl = try executable("curl")
        let login = try await runAsync(curl, ["-s", "-D", "-", "-o", "/dev/null", "--cacert", pki.caCertificate, "https://127.0.0.1:\(f.port)/?token=\(OperatorFixture.token)"])
        let cookie = login.stdout.split(separator: "\r\n").first { $0.lowercased().hasPrefix("set-cookie:") } ?? ""
        #expect(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "\(login.stdout)")

        // Renewed on disk (the key first, then the certificate, as a renewal tool may): the next connection gets the new one.
        let before = try await Self.servedSerial(port: f.port, ca: pki.caCertificate)
        #expect(before.hasPrefix("serial="))
        let renewed = try pki.issueServerCertificate("renewed")
        try Data(contentsOf: URL(fileURLWithPath: renewed.key)).write(to: URL(fileURLWithPath: key))
        // A moment with a key that does not match the certificate: the old pair keeps being served.
        try await Task.sleep(for: .milliseconds(1_200))
        #expect(try await f.cli(["status"] + server + ["--ca-file", pki.caCertificate]).status == 0)
        try Data(contentsOf: URL(fileURLWithPath: renewed.certificate)).write(to: URL(fileURLWithPath: certificate))
        let expected = try await runAsync(try executable("openssl"), ["x509", "-in", renewed.certificate, "-noout", "-serial"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(expected != before)
        try await withTimeout(.seconds(15), "the renewed certificate to be served") {
            while try await Self.servedSerial(port: f.port, ca: pki.caCertificate) != expected { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(try await f.cli(["status"] + server + ["--ca-file", pki.caCertificate]).status == 0)
        #expect(f.fleet.aggregator.output.contains("is not the certificate's"), "the mismatch was not reported")
    }

    @Test("a TLS certificate without its key, or a key that is not its, is refused at start and by --check-config", .ownThread)
    func badPairs() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let aggregator = try builtProduct("edgefleet-aggregator")
        let other = try pki.issueServerCertificate("other")
        for (flags, words) in [
            (["--tls-cert", pki.serverCertificate], "both"),
            (["--tls-cert", pki.serverCertificate, "--tls-key", other.key], "is not the certificate's"),
            (["--tls-cert", "/nonexistent.crt", "--tls-key", pki.serverKey], "cannot read the certificate"),
        ] {
            let result = try run(aggregator, ["--check-config"] + flags, environment: [:])
            #expect(result.status == 2, "\(flags)")
            #expect(result.stderr.contains(words), "\(flags): \(result.stderr)")
        }
        let good = try run(aggregator, ["--check-config", "--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey], environment: [:])
        #expect(good.status == 0 && good.stdout.contains("http: https "), "\(good.stdout) \(good.stderr)")
    }
}
