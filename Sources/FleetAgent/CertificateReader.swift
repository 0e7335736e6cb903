internal import CTLSProbe
import YAMLReader

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The earliest certificate expiry at a site, and what could not be read.
public struct CertificateReading: Sendable, Hashable {
    public var earliestNotAfter: Date?
    /// Which file (or kubeconfig user) holds the earliest certificate.
    public var source: String?
    /// One line per source that could not be read; reported as a failed check.
    public var problems: [String]

    public init(earliestNotAfter: Date?, source: String?, problems: [String]) {
        self.earliestNotAfter = earliestNotAfter
        self.source = source
        self.problems = problems
    }
}

/// Reads X.509 expiry dates from PEM files and from a kubeconfig's client
/// certificates. Uses the OpenSSL the agent already loads through libmosquitto
/// rather than swift-certificates, which would add swift-crypto to a binary that
/// must stay small. A missing, unreadable or malformed source becomes a problem
/// line, never a crash.
public enum CertificateReader {
    public static func read(files: [String], kubeconfig: String?) -> CertificateReading {
        var result = CertificateReading(earliestNotAfter: nil, source: nil, problems: [])
        func consider(_ pem: [UInt8], source: String) {
            switch earliestNotAfter(pem: pem) {
            case .success(let date):
                if result.earliestNotAfter.map({ date < $0 }) ?? true {
                    result.earliestNotAfter = date
                    result.source = source
                }
            case .failure(let problem):
                result.problems.append("\(source): \(problem)")
            }
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else {
                result.problems.append("\(file): cannot read the file")
                continue
            }
            consider(Array(data), source: file)
        }
        if let kubeconfig {
            switch clientCertificates(kubeconfig: kubeconfig) {
            case .success(let certificates):
                for (name, pem) in certificates { consider(pem, source: "kubeconfig \(name)") }
            case .failure(let problem):
                result.problems.append("\(kubeconfig): \(problem)")
            }
        }
        return result
    }

    /// The earliest notAfter in a PEM text (a file may hold a chain).
    public static func earliestNotAfter(pem: [UInt8]) -> Result<Date, CertificateProblem> {
        var earliest: Int64 = 0
        var error = [CChar](repeating: 0, count: 256)
        let count = pem.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                edgefleet_pem_earliest_not_after($0.baseAddress, $0.count, &earliest, &error, error.count)
            }
        }
        guard count > 0 else {
            return .failure(CertificateProblem(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)))
        }
        return .success(Date(timeIntervalSince1970: Double(earliest)))
    }

    /// The client certificates of a kubeconfig's users: `client-certificate-data`
    /// (base64 PEM) or `client-certificate` (a path, relative to the kubeconfig).
    static func clientCertificates(kubeconfig: String) -> Result<[(String, [UInt8])], CertificateProblem> {
        guard let data = FileManager.default.contents(atPath: kubeconfig) else { return .failure(CertificateProblem("cannot read the file")) }
        let root: YAMLNode?
        do {
            root = try YAMLNode.parse(String(decoding: data, as: UTF8.self))
        } catch {
            return .failure(CertificateProblem("not a valid kubeconfig (YAML): \(error)"))
        }
        guard let users = root?["users"]?.sequence else {
            return .failure(CertificateProblem("no users in the kubeconfig"))
        }
        var found: [(String, [UInt8])] = []
        for user in users {
            let name = user["name"]?.string ?? "?"
            guard let fields = user["user"], fields.mapping != nil else { continue }
            if let encoded = fields["client-certificate-data"]?.string {
                guard let pem = Data(base64Encoded: encoded.filter { !$0.isWhitespace }) else {
                    return .failure(CertificateProblem("user \(name): client-certificate-data is not base64"))
                }
                found.append((name, Array(pem)))
            } else if let path = fields["client-certificate"]?.string {
                let directory = kubeconfig.contains("/") ? String(kubeconfig[..<kubeconfig.lastIndex(of: "/")!]) : "."
                let resolved = path.hasPrefix("/") ? path : directory + "/" + path
                guard let pem = FileManager.default.contents(atPath: resolved) else {
                    return .failure(CertificateProblem("user \(name): cannot read client-certificate \(resolved)"))
                }
                found.append((name, Array(pem)))
            }
        }
        guard !found.isEmpty else { return .failure(CertificateProblem("no client certificate in the kubeconfig")) }
        return .success(found)
    }
}

public struct CertificateProblem: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
