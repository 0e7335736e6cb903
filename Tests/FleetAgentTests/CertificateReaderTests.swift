import FleetAgent
import Foundation
import TestSupport
import Testing

/// Makes a self-signed certificate valid for `days` days and returns its PEM path.
func certificate(in directory: String, named name: String, days: Int) throws -> String {
    let openssl = try executable("openssl")
    let result = try run(openssl, [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(directory)/\(name).key",
        "-out", "\(directory)/\(name).crt", "-days", String(days), "-subj", "/CN=\(name)",
    ])
    guard result.status == 0 else { throw TestSupportError(result.stderr) }
    return "\(directory)/\(name).crt"
}

@Suite("certificate expiry", .ownThread)
struct CertificateReaderTests {
    @Test("the earliest notAfter across files, chains and a kubeconfig's client certificates, with its source")
    func earliest() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let long = try certificate(in: directory, named: "long", days: 365)
        let short = try certificate(in: directory, named: "short", days: 20)
        let shortest = try certificate(in: directory, named: "shortest", days: 5)
        // A chain file: the later certificate first, the earlier second.
        let chain = directory + "/chain.pem"
        try (try String(contentsOfFile: long, encoding: .utf8) + String(contentsOfFile: short, encoding: .utf8))
            .write(toFile: chain, atomically: true, encoding: .utf8)
        let reading = CertificateReader.read(files: [long, chain], kubeconfig: nil)
        #expect(reading.problems.isEmpty)
        #expect(reading.source == chain)
        let days = try #require(reading.earliestNotAfter).timeIntervalSinceNow / 86_400
        #expect(days > 19.9 && days < 20.1)

        let data = try Data(contentsOf: URL(fileURLWithPath: shortest)).base64EncodedString()
        let kubeconfig = directory + "/admin.conf"
        try """
            apiVersion: v1
            kind: Config
            users:
            - name: admin
              user:
                client-certificate-data: \(data)
                client-key-data: bm90IHVzZWQ=
            - name: other
              user:
                client-certificate: long.crt
            """.write(toFile: kubeconfig, atomically: true, encoding: .utf8)
        let withKubeconfig = CertificateReader.read(files: [long, chain], kubeconfig: kubeconfig)
        #expect(withKubeconfig.problems.isEmpty, "\(withKubeconfig.problems)")
        #expect(withKubeconfig.source == "kubeconfig admin")
        let kubeDays = try #require(withKubeconfig.earliestNotAfter).timeIntervalSinceNow / 86_400
        #expect(kubeDays > 4.9 && kubeDays < 5.1)
    }

    @Test("missing, malformed and empty sources become problems, never a crash; good ones still count")
    func problems() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let good = try certificate(in: directory, named: "good", days: 30)
        let garbage = directory + "/garbage.pem"
        try "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let empty = directory + "/empty.pem"
        try "".write(toFile: empty, atomically: true, encoding: .utf8)
        let badKubeconfig = directory + "/kubeconfig"
        try "users: [ {name: x, user: {client-certificate-data: '%%%'}} ]\n".write(toFile: badKubeconfig, atomically: true, encoding: .utf8)
        let reading = CertificateReader.read(files: [good, garbage, empty, directory + "/missing.pem"], kubeconfig: badKubeconfig)
        #expect(reading.source == good)
        #expect(reading.problems.count == 4, "\(reading.problems)")
        #expect(reading.problems.contains { $0.hasPrefix(garbage) })
        #expect(reading.problems.contains { $0.hasPrefix(empty) && $0.contains("no certificate") })
        #expect(reading.problems.contains { $0.contains("missing.pem") && $0.contains("cannot read") })
        #expect(reading.problems.contains { $0.contains("not base64") })
    }
}
