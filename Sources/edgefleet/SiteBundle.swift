import ArgumentParser
import CommandSupport
import FleetCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Everything one site needs, in one directory (`edgefleet broker add-site SITE --bundle DIR`):
/// the agent's configuration with paths relative to it (so the directory works wherever it is
/// copied), the credentials, the broker's CA, a Kubernetes Secret and manifest, a systemd
/// drop-in and a README. The directory and every file in it are its owner's only (0700/0600):
/// the password, the key and the Secret are secret, and the rest is not worth telling apart.
struct SiteBundle {
    let site: String
    let directory: String
    let brokers: [String]
    let caFile: String?
    let caDir: String?
    let labels: String
    let topicRoot: String
    let passwd: String
    let force: Bool

    func write() throws {
        let manager = FileManager.default
        if manager.fileExists(atPath: directory), !((try? manager.contentsOfDirectory(atPath: directory)) ?? []).isEmpty {
            throw CLIFailure(code: EdgeFleetExit.refused, description: "\(directory) is not empty; refusing to overwrite a bundle")
        }
        let caText: String?
        if let caFile {
            guard let text = try? String(contentsOfFile: caFile, encoding: .utf8), text.contains("BEGIN CERTIFICATE") else {
                throw CLIFailure.usage("--ca-file: cannot read a PEM certificate from '\(caFile)'")
            }
            caText = text
        } else {
            caText = nil
        }
        let labelMap: [String: String]
        do { labelMap = labels.isEmpty ? [:] : try SiteLabels.parse(labels) } catch { throw CLIFailure.usage("--labels: \(error)") }
        let old = umask(0o077)
        defer { umask(old) }
        try manager.createDirectory(atPath: directory + "/kubernetes", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try manager.createDirectory(
            atPath: directory + "/systemd/edgefleet-agent.service.d", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = chmod(directory, 0o700)

        // The credential: a client certificate from the CA directory, or a password on the broker.
        var credential: [String] = []
        var secretFiles: [(name: String, text: String)] = []
        if let caDir {
            let out = directory + "/.issued"
            let (certificate, key) = try CertificateAuthority(directory: caDir).issueClient(commonName: site, days: 365, into: out)
            try manager.moveItem(atPath: certificate, toPath: directory + "/client.crt")
            try manager.moveItem(atPath: key, toPath: directory + "/client.key")
            try? manager.removeItem(atPath: out)
            for name in ["client.crt", "client.key"] {
                _ = chmod(directory + "/" + name, 0o600)
                secretFiles.append((name, try String(contentsOfFile: directory + "/" + name, encoding: .utf8)))
            }
            credential = ["certFile: client.crt", "keyFile: client.key"]
        } else {
            if !force && BrokerTool.users(in: passwd).contains(site) {
                throw CLIFailure(
                    code: EdgeFleetExit.refused,
                    description: "\(site) already has an account in \(passwd); use rotate-site, or --force to replace its password")
            }
            let password = BrokerTool.newPassword()
            try BrokerTool.setPassword(user: site, password: password, file: passwd)
            try Self.writeSecret(password + "\n", to: directory + "/password")
            secretFiles.append(("password", password + "\n"))
            credential = ["username: \(site)", "passwordFile: password"]
        }
        if let caText {
            try Self.writeSecret(caText, to: directory + "/ca.crt")
            secretFiles.append(("ca.crt", caText))
            credential.append("caFile: ca.crt")
        }

        var config = [
            "# The agent of site \(site), written by `edgefleet broker add-site --bundle`.",
            "# Paths are relative to this file. Check it: edgefleet-agent --config agent.yaml --check-config",
            "site: \(site)",
            "# Tried in order; the agent moves to the next when one fails.",
            "brokers:",
        ]
        config += brokers.map { "  - \($0)" }
        config += credential
        config += [
            "topicRoot: \(topicRoot)", "heartbeatInterval: 10s", "probeInterval: 60s", "stateDir: /var/lib/edgefleet-agent",
        ]
        if !labelMap.isEmpty {
            config.append("labels:")
            config += labelMap.sorted { $0.key < $1.key }.map { "  \($0.key): \"\($0.value)\"" }
        }
        config += [
            "checks:",
            "  # Are the Azure Arc agents (azure-arc namespace) ready? Through kubectl and the kubeconfig below.",
            "  - name: arc-agents",
            "    kind: arc-agents",
            "    interval: 60s",
            "# kubeconfig: /etc/kubernetes/admin.conf",
        ]
        let agentYAML = config.joined(separator: "\n") + "\n"
        try Self.writeSecret(agentYAML, to: directory + "/agent.yaml")
        try Self.writeSecret(Self.kubernetesSecret(site: site, agentYAML: agentYAML, files: secretFiles), to: directory + "/kubernetes/secret.yaml")
        try Self.writeSecret(Self.kubernetesManifest(site: site), to: directory + "/kubernetes/agent.yaml")
        try Self.writeSecret(
            """
            # The agent of \(site) reads its bundle in /etc/edgefleet/agent (written by edgefleet broker add-site --bundle).
            [Service]
            ExecStart=
            ExecStart=/usr/local/bin/edgefleet-agent --config /etc/edgefleet/agent/agent.yaml

            """, to: directory + "/systemd/edgefleet-agent.service.d/bundle.conf")
        try Self.writeSecret(Self.readme(site: site, brokers: brokers), to: directory + "/README.md")
    }

    /// Written with mode 0600 from the start (never briefly readable by others).
    static func writeSecret(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIFailure.failure("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw CLIFailure.failure("cannot write \(path): \(String(cString: strerror(errno)))") }
            written += n
        }
        guard fsync(fd) == 0 else { throw CLIFailure.failure("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    static func indent(_ text: String, _ spaces: Int) -> String {
        let pad = String(repeating: " ", count: spaces)
        return text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : pad + $0 }.joined(separator: "\n")
    }

    static func kubernetesSecret(site: String, agentYAML: String, files: [(name: String, text: String)]) -> String {
        var text = """
            # The agent's configuration and credentials for site \(site). Secret: keep this file out of version control.
            apiVersion: v1
            kind: Secret
            metadata:
              name: edgefleet-agent
              namespace: edgefleet
              labels:
                app.kubernetes.io/name: edgefleet-agent
            type: Opaque
            stringData:
              agent.yaml: |

            """
        text += indent(agentYAML, 4)
        for file in files {
            text += "  \(file.name): |\n" + indent(file.text.hasSuffix("\n") ? file.text : file.text + "\n", 4)
        }
        return text
    }

    static func kubernetesManifest(site: String) -> String {
        """
        # The agent of site \(site) in its cluster: kubectl apply -f kubernetes/ (with secret.yaml beside it).
        apiVersion: v1
        kind: Namespace
        metadata:
          name: edgefleet
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata:
          name: edgefleet-agent
          namespace: edgefleet
        ---
        # Read-only: the Arc agents' deployments (the arc-agents check), nodes and pods.
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata:
          name: edgefleet-agent-read
        rules:
          - apiGroups: [""]
            resources: [nodes, pods]
            verbs: [get, list]
          - apiGroups: [apps]
            resources: [deployments]
            verbs: [get, list]
          - nonResourceURLs: [/readyz, /livez, /version]
            verbs: [get]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata:
          name: edgefleet-agent-read
        roleRef:
          apiGroup: rbac.authorization.k8s.io
          kind: ClusterRole
          name: edgefleet-agent-read
        subjects:
          - kind: ServiceAccount
            name: edgefleet-agent
            namespace: edgefleet
        ---
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata:
          name: edgefleet-agent-state
          namespace: edgefleet
        spec:
          accessModes: [ReadWriteOnce]
          resources:
            requests:
              storage: 64Mi
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: edgefleet-agent
          namespace: edgefleet
          labels:
            app.kubernetes.io/name: edgefleet-agent
        spec:
          replicas: 1
          strategy:
            type: Recreate
          selector:
            matchLabels:
              app.kubernetes.io/name: edgefleet-agent
          template:
            metadata:
              labels:
                app.kubernetes.io/name: edgefleet-agent
            spec:
              serviceAccountName: edgefleet-agent
              securityContext:
                runAsNonRoot: true
                runAsUser: 65532
                runAsGroup: 65532
                fsGroup: 65532
                seccompProfile:
                  type: RuntimeDefault
              containers:
                - name: agent
                  image: registry.example.com/edgefleet/edgefleet-agent:0.1.0
                  args: [--config, /etc/edgefleet/agent/agent.yaml]
                  resources:
                    requests: {cpu: 10m, memory: 48Mi}
                    limits: {cpu: 200m, memory: 256Mi}
                  securityContext:
                    allowPrivilegeEscalation: false
                    readOnlyRootFilesystem: true
                    capabilities: {drop: [ALL]}
                  volumeMounts:
                    - {name: bundle, mountPath: /etc/edgefleet/agent, readOnly: true}
                    - {name: state, mountPath: /var/lib/edgefleet-agent}
              volumes:
                - name: bundle
                  secret: {secretName: edgefleet-agent, defaultMode: 0400}
                - name: state
                  persistentVolumeClaim: {claimName: edgefleet-agent-state}

        """
    }

    static func readme(site: String, brokers: [String]) -> String {
        """
        # The EdgeFleet agent of site \(site)

        Written by `edgefleet broker add-site \(site) --bundle`. Everything in this directory is readable by its owner
        only: `password` (or `client.key`) and `kubernetes/secret.yaml` are secret. Copy it to the site as it is.

        Its agent talks to \(brokers.joined(separator: ", ")) (in that order: it moves to the next when one fails).

        ## On a host with systemd (the agent installed as /usr/local/bin/edgefleet-agent)

            sudo mkdir -p /etc/edgefleet && sudo cp -a . /etc/edgefleet/agent && sudo cp -a systemd/edgefleet-agent.service.d /etc/systemd/system/
            sudo systemctl daemon-reload && sudo systemctl enable --now edgefleet-agent

        ## In the site's cluster

            kubectl apply -f kubernetes/secret.yaml -f kubernetes/agent.yaml

        Check the configuration first if you like: `edgefleet-agent --config agent.yaml --check-config`.

        """
    }
}
