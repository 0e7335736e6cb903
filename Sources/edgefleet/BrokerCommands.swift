import ArgumentParser
import CommandSupport
import Subprocesses
import FleetCore
import MQTT
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `edgefleet broker ...`: credentials on the broker for sites, the aggregator, operators
/// and bridges (broker-config/production/). Passwords go through `mosquitto_passwd`;
/// certificates through `openssl ca` with a CA directory this tool keeps (index, serials,
/// the CRL). Names are checked before anything is written: a site's username is its site
/// id, and role accounts carry a '.', which no site id may contain.
struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Manage the broker's credentials: sites (password or certificate), the aggregator, operators, bridges.",
        discussion: """
            After a change, reload the broker so it reads the password file and the ACL again \
            (systemctl reload mosquitto, or SIGHUP); a revoked certificate is refused once the broker restarts.
            """,
        subcommands: [
            BrokerAddSite.self, BrokerRemoveSite.self, BrokerRotateSite.self, BrokerInitCA.self, BrokerIssueCert.self,
            BrokerRevokeCert.self, BrokerAddRole.self,
        ])
}

/// Where the broker's files are, shared by the subcommands.
struct BrokerFiles: ParsableArguments {
    @Option(help: "The broker's mosquitto_passwd file (default /etc/mosquitto/edgefleet/passwd).")
    var passwd = "/etc/mosquitto/edgefleet/passwd"
    @Option(help: "Write the new password to this file (mode 0600) instead of standard output.")
    var passwordOut: String?
}

enum BrokerTool {
    /// Runs a tool (through the project's one runner: nothing but standard input, output and
    /// error reaches it); its output on failure becomes the error.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let outcome: CommandOutcome
        do {
            outcome = try CommandRunner.runBlocking(
                [try locate(tool).path] + arguments, timeout: .seconds(300), capture: .head(bytes: 1 << 20)
            ).get()
        } catch {
            throw CLIFailure.failure("\(tool): \(error)")
        }
        guard outcome.exitCode == 0 else {
            let status = outcome.exitCode.map { "exit \($0)" } ?? (outcome.timedOut ? "timed out" : "signal \(outcome.signal ?? 0)")
            throw CLIFailure.failure(
                "\(tool) \(arguments.first ?? "") failed (\(status)): \(outcome.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return outcome.output
    }

    static func locate(_ tool: String) throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/bin", "/usr/sbin"] {
            let candidate = URL(fileURLWithPath: "\(directory)/\(tool)")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw CLIFailure.failure("\(tool) is not installed (Debian package: \(tool == "openssl" ? "openssl" : "mosquitto"))")
    }

    /// A new random password: 32 hex digits.
    static func newPassword() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in String(format: "%08x", UInt32.random(in: 0...UInt32.max, using: &generator)) }.joined()
    }

    /// Sets `user`'s password in the mosquitto password file (created if missing, readable
    /// by the broker's group only: root:mosquitto 0640).
    static func setPassword(user: String, password: String, file: String) throws {
        if !FileManager.default.fileExists(atPath: file) {
            _ = FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        // -b: batch mode (the password is an argument for the moment mosquitto_passwd runs).
        try run("mosquitto_passwd", ["-b", file, user, password])
        shareWithBroker(file)
    }

    /// mosquitto reads its files after dropping to the `mosquitto` user: give them to that
    /// group (when it exists), readable, never writable, never world-readable.
    static func shareWithBroker(_ path: String, mode: mode_t = 0o640) {
        if let group = getgrnam("mosquitto") { _ = chown(path, uid_t.max, group.pointee.gr_gid) }
        _ = chmod(path, mode)
    }

    static func users(in file: String) -> [String] {
        ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            line.split(separator: ":", maxSplits: 1).first.map(String.init)
        }
    }

    /// Prints the password, or writes it to `path` (mode 0600).
    static func deliver(password: String, for user: String, to path: String?) throws {
        guard let path else {
            print(password)
            return
        }
        guard FileManager.default.createFile(atPath: path, contents: Data((password + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw CLIFailure.failure("cannot write \(path)")
        }
        printError("the password of \(user) is in \(path)")
    }

    static func siteID(_ text: String) throws -> SiteID {
        do { return try SiteID(text) } catch { throw ValidationError("SITE: \(error.description)") }
    }
}

struct BrokerAddSite: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-site", abstract: "Give a site a broker account (username = the site id) with a new random password; with --bundle, everything the site needs.",
        discussion: """
            With --bundle DIR it writes, readable by its owner only: the site's agent.yaml (paths relative to it), its \
            credentials (a password, or with --ca-dir a client certificate whose CN is the site id), the broker's CA \
            (--ca-file), a Kubernetes Secret and manifest (kubernetes/, for kubectl apply), a systemd drop-in, and a \
            README with the commands to run at the site. Nothing secret is printed.
            """)
    @Argument(help: "The site id.") var site: String
    @OptionGroup var files: BrokerFiles
    @Flag(help: "Replace the password if the site already has an account.") var force = false
    @Option(help: "Write the site's bundle into this directory (created; must be empty or absent).") var bundle: String?
    @Option(help: "With --bundle: a broker URL for the agent (repeatable: the agent fails over in order).") var broker: [String] = []
    @Option(help: "With --bundle: the broker's CA certificate (PEM) to put in the bundle.") var caFile: String?
    @Option(help: "With --bundle: a client certificate from this CA directory (init-ca) instead of a password.") var caDir: String?
    @Option(help: "With --bundle: the site's labels, k=v,... (Kubernetes' syntax).") var labels: String?
    @Option(help: "With --bundle: the topic root (default edgefleet/v1).") var topicRoot = "edgefleet/v1"

    func validate() throws {
        _ = try BrokerTool.siteID(site)
        if bundle == nil, !broker.isEmpty || caFile != nil || caDir != nil || labels != nil {
            throw ValidationError("--broker, --ca-file, --ca-dir and --labels go with --bundle")
        }
        if bundle != nil {
            if broker.isEmpty { throw ValidationError("--bundle needs at least one --broker URL") }
            for url in broker {
                do { _ = try BrokerURL(parsing: url) } catch { throw ValidationError("--broker \(url): \(error)") }
            }
            if broker.contains(where: { $0.hasPrefix("mqtts://") }), caFile == nil { throw ValidationError("an mqtts:// broker needs --ca-file (its CA)") }
            if let labels {
                do { _ = try SiteLabels.parse(labels) } catch { throw ValidationError("--labels: \(error)") }
            }
            if caDir != nil, files.passwordOut != nil { throw ValidationError("--ca-dir makes a certificate: there is no password to write") }
        }
    }

    func run() async throws {
        try cliFailures {
            if let bundle {
                try SiteBundle(
                    site: site, directory: bundle, brokers: broker, caFile: caFile, caDir: caDir, labels: labels ?? "", topicRoot: topicRoot,
                    passwd: files.passwd, force: force
                ).write()
                print("wrote the bundle of \(site) to \(bundle); see \(bundle)/README.md")
                return
            }
            if !force && BrokerTool.users(in: files.passwd).contains(site) {
                throw CLIFailure(code: EdgeFleetExit.refused, description: "\(site) already has an account in \(files.passwd); use rotate-site to change its password")
            }
            let password = BrokerTool.newPassword()
            try BrokerTool.setPassword(user: site, password: password, file: files.passwd)
            try BrokerTool.deliver(password: password, for: site, to: files.passwordOut)
        }
    }
}

struct BrokerRotateSite: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate-site", abstract: "Give a site (or a role account) a new random password; the old one stops working at the next reload.")
    @Argument(help: "The site id, or a role account (edgefleet.aggregator, operator.NAME, bridge.NAME).") var name: String
    @OptionGroup var files: BrokerFiles

    func validate() throws {
        if !RoleName.isRole(name) { _ = try BrokerTool.siteID(name) }
    }

    func run() async throws {
        try cliFailures {
            guard BrokerTool.users(in: files.passwd).contains(name) else {
                throw CLIFailure(code: EdgeFleetExit.notFound, description: "\(name) has no account in \(files.passwd)")
            }
            let password = BrokerTool.newPassword()
            try BrokerTool.setPassword(user: name, password: password, file: files.passwd)
            try BrokerTool.deliver(password: password, for: name, to: files.passwordOut)
        }
    }
}

struct BrokerRemoveSite: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove-site", abstract: "Remove a site's password and revoke its certificates (with --ca-dir).")
    @Argument(help: "The site id.") var site: String
    @Option(help: "The broker's mosquitto_passwd file.") var passwd = "/etc/mosquitto/edgefleet/passwd"
    @Option(help: "The CA directory of issue-cert: also revoke the site's certificates.") var caDir: String?

    func validate() throws { _ = try BrokerTool.siteID(site) }

    func run() async throws {
        try cliFailures {
            var done = false
            if BrokerTool.users(in: passwd).contains(site) {
                try BrokerTool.run("mosquitto_passwd", ["-D", passwd, site])
                print("removed \(site) from \(passwd)")
                done = true
            }
            if let caDir {
                let revoked = try CertificateAuthority(directory: caDir).revoke(commonName: site)
                if !revoked.isEmpty {
                    print("revoked \(revoked.count) certificate(s) of \(site); crl.pem rewritten")
                    done = true
                }
            }
            guard done else { throw CLIFailure(code: EdgeFleetExit.notFound, description: "\(site) has no account or certificate") }
            print(
                "reload the broker (systemctl reload mosquitto; restart it for a revoked certificate), then clear the site's retained topics as the admin:\n"
                    + "  mosquitto_pub -r -n -t edgefleet/v1/sites/\(site)/presence ... and -t edgefleet/v1/sites/\(site)/status")
        }
    }
}

/// Role accounts: `edgefleet.aggregator`, `operator.NAME`, `bridge.NAME` (NAME as a site id).
enum RoleName {
    static func isRole(_ name: String) -> Bool {
        if name == "edgefleet.aggregator" || name == "edgefleet.admin" { return true }
        for prefix in ["operator.", "bridge."] where name.hasPrefix(prefix) {
            return SiteID.isValid(String(name.dropFirst(prefix.count)))
        }
        return false
    }
}

struct BrokerAddRole: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-account",
        abstract: "An account for the aggregator, an operator or a bridge, with a new random password; operators and bridges get their ACL block.",
        discussion: """
            edgefleet broker add-account aggregator          -> edgefleet.aggregator (its ACL block ships in the ACL)
            edgefleet broker add-account admin               -> edgefleet.admin: reads everything, clears a removed site's retained topics
            edgefleet broker add-account operator alice      -> operator.alice: reads {root}/fleet/# and the aggregator's presence
            edgefleet broker add-account bridge region-eu    -> bridge.region-eu: writes {root}/sites/#, reads the fleet's topics
            """)
    enum Role: String, ExpressibleByArgument, CaseIterable { case aggregator, admin, `operator`, bridge }
    @Argument(help: "aggregator, operator or bridge.") var role: Role
    @Argument(help: "The operator's or bridge's name (a-z, 0-9, '-').") var name: String?
    @OptionGroup var files: BrokerFiles
    @Option(help: "The broker's ACL file (operators and bridges are appended).") var acl = "/etc/mosquitto/edgefleet/acl"
    @Option(help: "Topic root (default edgefleet/v1).") var topicRoot = "edgefleet/v1"

    func validate() throws {
        switch (role, name) {
        case (.aggregator, _?), (.admin, _?): throw ValidationError("the \(role.rawValue)'s account has no name")
        case (.operator, nil), (.bridge, nil): throw ValidationError("name the \(role.rawValue)")
        case (_, let name?): if let problem = SiteID.problem(with: name) { throw ValidationError("NAME: \(problem.replacingOccurrences(of: "site id", with: "name"))") }
        default: break
        }
        do { _ = try TopicRoot(topicRoot) } catch { throw ValidationError("--topic-root: \(error)") }
    }

    var username: String {
        switch role {
        case .aggregator: "edgefleet.aggregator"
        case .admin: "edgefleet.admin"
        case .operator: "operator.\(name!)"
        case .bridge: "bridge.\(name!)"
        }
    }

    func run() async throws {
        try cliFailures {
            let user = username
            if BrokerTool.users(in: files.passwd).contains(user) {
                throw CLIFailure(code: EdgeFleetExit.refused, description: "\(user) already has an account; use rotate-site \(user) for a new password")
            }
            let block: String? =
                switch role {
                case .aggregator, .admin: nil
                case .operator:
                    "\nuser \(user)\ntopic read \(topicRoot)/fleet/#\ntopic read \(topicRoot)/aggregator/#\n"
                case .bridge:
                    "\nuser \(user)\ntopic write \(topicRoot)/sites/#\ntopic read \(topicRoot)/fleet/#\ntopic read \(topicRoot)/aggregator/#\n"
                }
            if let block {
                let existing = (try? String(contentsOfFile: acl, encoding: .utf8)) ?? ""
                if !existing.contains("\nuser \(user)\n") {
                    guard let handle = FileHandle(forWritingAtPath: acl) else { throw CLIFailure.failure("cannot write the ACL \(acl)") }
                    handle.seekToEndOfFile()
                    handle.write(Data(block.utf8))
                    try handle.close()
                }
            }
            let password = BrokerTool.newPassword()
            try BrokerTool.setPassword(user: user, password: password, file: files.passwd)
            try BrokerTool.deliver(password: password, for: user, to: files.passwordOut)
        }
    }
}

struct BrokerInitCA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-ca",
        abstract: "Create a CA for site certificates, the broker's server certificate and an empty CRL, in one directory.")
    @Option(help: "The CA directory to create.") var caDir: String
    @Option(name: .customLong("server-name"), help: "A DNS name or IP address of the broker (repeatable).") var serverNames: [String] = []
    @Option(help: "Days the server certificate is valid.") var days = 825

    func validate() throws {
        if serverNames.isEmpty { throw ValidationError("--server-name: give the broker's DNS name or IP address (repeatable)") }
        for name in serverNames where name.isEmpty || name.contains(where: { $0 == "," || $0.isWhitespace }) {
            throw ValidationError("--server-name: '\(name)' is not a host name or an address")
        }
    }

    func run() async throws {
        try cliFailures {
            let ca = try CertificateAuthority.create(directory: caDir)
            try ca.issueServer(names: serverNames, days: days)
            print("CA, server certificate and CRL in \(caDir): ca.crt, server.crt, server.key, crl.pem")
        }
    }
}

struct BrokerIssueCert: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issue-cert", abstract: "Sign a client certificate for a site (CN = the site id) with the CA of init-ca.")
    @Argument(help: "The site id.") var site: String
    @Option(help: "The CA directory of init-ca.") var caDir: String
    @Option(help: "Where to write SITE.crt and SITE.key (default: the current directory).") var out = "."
    @Option(help: "Days the certificate is valid.") var days = 365

    func validate() throws { _ = try BrokerTool.siteID(site) }

    func run() async throws {
        try cliFailures {
            let (certificate, key) = try CertificateAuthority(directory: caDir).issueClient(commonName: site, days: days, into: out)
            print("\(certificate)\n\(key)")
        }
    }
}

struct BrokerRevokeCert: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke-cert", abstract: "Revoke every certificate of a site and rewrite the CRL (the broker refuses them after a restart).")
    @Argument(help: "The site id.") var site: String
    @Option(help: "The CA directory of init-ca.") var caDir: String

    func validate() throws { _ = try BrokerTool.siteID(site) }

    func run() async throws {
        try cliFailures {
            let revoked = try CertificateAuthority(directory: caDir).revoke(commonName: site)
            guard !revoked.isEmpty else { throw CLIFailure(code: EdgeFleetExit.notFound, description: "no valid certificate of \(site) in \(caDir)") }
            print("revoked \(revoked.joined(separator: ", ")); \(caDir)/crl.pem rewritten")
        }
    }
}

/// Failures as one line on standard error and the contract's exit code.
func cliFailures(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let failure as CLIFailure {
        printError("edgefleet: \(failure.description)")
        throw ExitCode(failure.code)
    }
}

/// A CA directory managed with `openssl ca`: its own config, the index of issued
/// certificates (so revocation finds them by CN), serials, and the CRL.
struct CertificateAuthority {
    let directory: String

    init(directory relative: String) throws {
        let directory = URL(fileURLWithPath: relative).standardizedFileURL.path
        self.directory = directory
        guard FileManager.default.fileExists(atPath: "\(directory)/openssl.cnf") else {
            throw CLIFailure.usage("--ca-dir: \(directory) is not a CA directory made by `edgefleet broker init-ca`")
        }
    }

    private init(unchecked directory: String) { self.directory = directory }

    static func create(directory relative: String) throws -> CertificateAuthority {
        // openssl.cnf names the directory: absolute, and nothing openssl would expand.
        let directory = URL(fileURLWithPath: relative).standardizedFileURL.path
        guard !directory.contains(where: { $0 == "$" || $0.isWhitespace || $0 == "\"" }) else {
            throw CLIFailure.usage("--ca-dir: a path without spaces, quotes or '$', got '\(directory)'")
        }
        let manager = FileManager.default
        if manager.fileExists(atPath: "\(directory)/ca.key") {
            throw CLIFailure(code: EdgeFleetExit.refused, description: "\(directory) already holds a CA; refusing to overwrite it")
        }
        try manager.createDirectory(atPath: "\(directory)/issued", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = manager.createFile(atPath: "\(directory)/index.txt", contents: Data())
        _ = manager.createFile(atPath: "\(directory)/serial", contents: Data("1000\n".utf8))
        _ = manager.createFile(atPath: "\(directory)/crlnumber", contents: Data("1000\n".utf8))
        let config = """
            [ ca ]
            default_ca = edgefleet

            [ edgefleet ]
            dir = \(directory)
            database = $dir/index.txt
            new_certs_dir = $dir/issued
            serial = $dir/serial
            crlnumber = $dir/crlnumber
            certificate = $dir/ca.crt
            private_key = $dir/ca.key
            default_md = sha256
            default_days = 365
            # The broker refuses every certificate once the CRL is past its next update: rewrite
            # it (revoke-cert does, and so does init-ca) well within a year.
            default_crl_days = 365
            policy = policy_cn
            unique_subject = no
            copy_extensions = copy

            [ policy_cn ]
            commonName = supplied

            [ client ]
            basicConstraints = CA:FALSE
            keyUsage = critical, digitalSignature, keyEncipherment
            extendedKeyUsage = clientAuth

            [ server ]
            basicConstraints = CA:FALSE
            keyUsage = critical, digitalSignature, keyEncipherment
            extendedKeyUsage = serverAuth

            """
        try config.write(toFile: "\(directory)/openssl.cnf", atomically: true, encoding: .utf8)
        try BrokerTool.run(
            "openssl",
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(directory)/ca.key", "-out",
             "\(directory)/ca.crt", "-days", "3650", "-subj", "/CN=EdgeFleet broker CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        chmod("\(directory)/ca.key", 0o600)
        // The broker reads ca.crt, server.* and crl.pem from here: the directory is the
        // broker group's to enter, the CA key stays root's.
        BrokerTool.shareWithBroker(directory, mode: 0o750)
        let ca = CertificateAuthority(unchecked: directory)
        try ca.writeCRL()
        return ca
    }

    func issueServer(names: [String], days: Int) throws {
        let san = names.map { name in
            let isIP = name.contains(":") || name.allSatisfy({ $0.isNumber || $0 == "." })  // IPv4, or IPv6 (hex with colons)
            return isIP ? "IP:\(name)" : "DNS:\(name)"
        }.joined(separator: ",")
        try sign(commonName: names[0], extensions: "server", san: san, days: days, key: "\(directory)/server.key", certificate: "\(directory)/server.crt")
        BrokerTool.shareWithBroker("\(directory)/server.key")
    }

    func issueClient(commonName: String, days: Int, into out: String) throws -> (String, String) {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let key = "\(out)/\(commonName).key"
        let certificate = "\(out)/\(commonName).crt"
        try sign(commonName: commonName, extensions: "client", san: nil, days: days, key: key, certificate: certificate)
        return (certificate, key)
    }

    private func sign(commonName: String, extensions: String, san: String?, days: Int, key: String, certificate: String) throws {
        let request = "\(directory)/request-\(getpid()).csr"
        defer { unlink(request) }
        var arguments = [
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", request, "-subj",
            "/CN=\(commonName)",
        ]
        if let san { arguments += ["-addext", "subjectAltName=\(san)"] }
        try BrokerTool.run("openssl", arguments)
        chmod(key, 0o600)
        try BrokerTool.run(
            "openssl",
            ["ca", "-batch", "-config", "\(directory)/openssl.cnf", "-extensions", extensions, "-days", "\(days)", "-notext", "-in", request,
             "-out", certificate])
    }

    /// Revokes every valid certificate whose subject is `CN=commonName`; returns their serials.
    func revoke(commonName: String) throws -> [String] {
        let index = (try? String(contentsOfFile: "\(directory)/index.txt", encoding: .utf8)) ?? ""
        var revoked: [String] = []
        for line in index.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count >= 6, fields[0] == "V", fields[5] == "/CN=\(commonName)" else { continue }
            let serial = String(fields[3])
            try BrokerTool.run("openssl", ["ca", "-config", "\(directory)/openssl.cnf", "-revoke", "\(directory)/issued/\(serial).pem"])
            revoked.append(serial)
        }
        if !revoked.isEmpty { try writeCRL() }
        return revoked
    }

    func writeCRL() throws {
        try BrokerTool.run("openssl", ["ca", "-config", "\(directory)/openssl.cnf", "-gencrl", "-out", "\(directory)/crl.pem"])
        BrokerTool.shareWithBroker("\(directory)/crl.pem", mode: 0o644)
    }
}
