public import Logging
import NIOCore
public import NIOSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The HTTP server's certificate chain and key (`--tls-cert`, `--tls-key`, PEM), read again
/// when either file changes (looked at no more than once a second, at a connection's
/// handshake): a renewed certificate is served to the next connection without a restart. A
/// pair that does not load (a half-written file, a key that does not match) keeps the last
/// good one, and says so once.
public final class TLSFiles: Sendable {
    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    let certificatePath: String
    let keyPath: String
    let logger: Logger?
    private struct State {
        var chain: [NIOSSLCertificate]
        var key: NIOSSLPrivateKey
        var stamps: [timespec?]
        var checkedAt: ContinuousClock.Instant
        var reported: String?
    }

    private let state: Mutex<State>

    /// Loads both files now: a server must not start with a certificate it cannot serve.
    public init(certificate: String, key: String, logger: Logger? = nil) throws(LoadError) {
        certificatePath = certificate
        keyPath = key
        self.logger = logger
        let (chain, privateKey) = try Self.load(certificate: certificate, key: key)
        state = Mutex(State(chain: chain, key: privateKey, stamps: Self.stamps([certificate, key]), checkedAt: .now, reported: nil))
    }

    /// Reads and checks a pair: at least one certificate, a key, and the key the first
    /// certificate's (a mismatch would fail every handshake).
    public static func load(certificate: String, key: String) throws(LoadError) -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
        let chain: [NIOSSLCertificate]
        let privateKey: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificate)
        } catch {
            throw LoadError(description: "cannot read the certificate '\(certificate)': \(error)")
        }
        guard let leaf = chain.first else { throw LoadError(description: "the certificate file '\(certificate)' holds no certificate") }
        do {
            privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
        } catch {
            throw LoadError(description: "cannot read the private key '\(key)': \(error)")
        }
        // The pair must match: a context built with both fails otherwise.
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        configuration.minimumTLSVersion = .tlsv12
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw LoadError(description: "the key '\(key)' is not the certificate's ('\(certificate)', \(leaf)): \(error)")
        }
        return (chain, privateKey)
    }

    static func stamps(_ paths: [String]) -> [timespec?] {
        paths.map { path in
            var info = stat()
            return stat(path, &info) == 0 ? info.st_mtim : nil
        }
    }

    /// The pair to serve now, read again if a file changed since the last look.
    func current() -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
        state.withLock { s in
            let now = ContinuousClock.now
            guard now - s.checkedAt >= .seconds(1) else { return (s.chain, s.key) }
            s.checkedAt = now
            let stamps = Self.stamps([certificatePath, keyPath])
            let same = zip(stamps, s.stamps).allSatisfy { a, b in a?.tv_sec == b?.tv_sec && a?.tv_nsec == b?.tv_nsec }
            if same { return (s.chain, s.key) }
            do {
                (s.chain, s.key) = try Self.load(certificate: certificatePath, key: keyPath)
                s.stamps = stamps
                s.reported = nil
                logger?.info("TLS certificate read again", metadata: ["certificate": "\(certificatePath)"])
            } catch let error as LoadError {
                if s.reported != error.description {
                    s.reported = error.description
                    logger?.error("\(error.description); serving the certificate read before")
                }
            } catch {}
            return (s.chain, s.key)
        }
    }

    /// The server's TLS configuration: TLS 1.2 or later, and each handshake served the pair
    /// `current()` gives (so a rotation reaches new connections).
    public func serverConfiguration() -> TLSConfiguration {
        let (chain, key) = current()
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.sslContextCallback = { [self] _, promise in
            let (chain, key) = current()
            var override = NIOSSLContextConfigurationOverride()
            override.certificateChain = chain.map { .certificate($0) }
            override.privateKey = .privateKey(key)
            promise.succeed(override)
        }
        return configuration
    }
}
