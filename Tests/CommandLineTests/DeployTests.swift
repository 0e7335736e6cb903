import Foundation
import TestSupport
import Testing
import YAMLReader

/// The deployment files in `deploy/`: the systemd units verified by systemd, the
/// Kubernetes manifests parsed and their references checked (names, keys, ports, the
/// configuration they carry loaded by the real binaries), the container build files read.
@Suite("deployment files")
struct DeployTests {
    static let deploy = repositoryRoot.path + "/deploy"

    @Test("the systemd units pass systemd-analyze verify and carry the hardening", arguments: ["agent", "aggregator"])
    func systemdUnits(_ name: String) async throws {
        let analyze = try executable("systemd-analyze")
        let text = try String(contentsOfFile: "\(Self.deploy)/systemd/edgefleet-\(name).service", encoding: .utf8)
        for setting in [
            "DynamicUser=yes", "StateDirectory=edgefleet-\(name)", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=always",
            "KillMode=control-group", "CapabilityBoundingSet=\n", "ProtectHome=yes", "PrivateTmp=yes", "MemoryMax=",
            "ExecStart=/usr/local/bin/edgefleet-\(name) --config /etc/edgefleet/\(name).yaml",
        ] {
            #expect(text.contains(setting), "edgefleet-\(name).service lacks \(setting)")
        }
        // systemd checks that the command exists: point it at the binary this build made.
        let directory = try temporaryDirectory("edgefleet-units")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let unit = "\(directory)/edgefleet-\(name).service"
        try text.replacingOccurrences(of: "/usr/local/bin/edgefleet-\(name)", with: try builtProduct("edgefleet-\(name)").path)
            .write(toFile: unit, atomically: true, encoding: .utf8)
        let result = try await runAsync(analyze, ["verify", "--man=no", unit])
        #expect(result.status == 0 && result.stderr.isEmpty && result.stdout.isEmpty, "\(result.stdout)\(result.stderr)")
    }

    /// The documents of a multi-document YAML file.
    static func documents(_ file: String) throws -> [YAMLNode] {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        return try text.components(separatedBy: "\n---\n").compactMap { try YAMLNode.parse($0) }
    }

    static func find(_ documents: [YAMLNode], kind: String, name: String) -> YAMLNode? {
        documents.first { $0["kind"]?.string == kind && $0["metadata"]?["name"]?.string == name }
    }

    @Test("Kubernetes manifests: every name, key and port a workload refers to exists; its configuration loads in the real binary",
          arguments: [("agent.yaml", "edgefleet-agent"), ("aggregator.yaml", "edgefleet-aggregator"), ("aggregator-ha.yaml", "edgefleet-aggregator")])
    func kubernetes(_ file: String, _ binary: String) async throws {
        let documents = try Self.documents("\(Self.deploy)/kubernetes/\(file)")
        let workloads = documents.filter { ["Deployment", "StatefulSet"].contains($0["kind"]?.string ?? "") }
        try #require(workloads.count == 1)
        let workload = workloads[0]
        let namespace = try #require(workload["metadata"]?["namespace"]?.string)
        #expect(Self.find(documents, kind: "Namespace", name: namespace) != nil)
        let pod = try #require(workload["spec"]?["template"]?["spec"])
        let podLabels = Dictionary(
            uniqueKeysWithValues: (workload["spec"]?["template"]?["metadata"]?["labels"]?.mapping ?? []).map { ($0.key.string!, $0.value.string!) })
        for pair in workload["spec"]?["selector"]?["matchLabels"]?.mapping ?? [] {
            #expect(podLabels[pair.key.string!] == pair.value.string, "the selector does not match the pod's labels")
        }
        // The service account, and what binds roles to it.
        let account = try #require(pod["serviceAccountName"]?.string)
        #expect(Self.find(documents, kind: "ServiceAccount", name: account)?["metadata"]?["namespace"]?.string == namespace)
        for binding in documents where ["RoleBinding", "ClusterRoleBinding"].contains(binding["kind"]?.string ?? "") {
            let role = try #require(binding["roleRef"])
            #expect(Self.find(documents, kind: role["kind"]!.string!, name: role["name"]!.string!) != nil, "roleRef \(role["name"]!.string!)")
            for subject in binding["subjects"]?.sequence ?? [] {
                #expect(subject["name"]?.string == account && subject["namespace"]?.string == namespace)
            }
        }
        #expect(pod["securityContext"]?["runAsNonRoot"]?.string == "true")

        // Volumes: each ConfigMap, Secret and claim exists with the keys it names.
        var mountedFiles: [String: String] = [:]  // path in the container → content
        var settingsEnvironment: [String: String] = [:]  // EDGEFLEET_* variables the containers set
        let volumes = pod["volumes"]?.sequence ?? []
        let claimTemplates = (workload["spec"]?["volumeClaimTemplates"]?.sequence ?? []).compactMap { $0["metadata"]?["name"]?.string }
        let containers = try #require(pod["containers"]?.sequence)
        for container in containers {
            for mount in container["volumeMounts"]?.sequence ?? [] {
                let name = try #require(mount["name"]?.string)
                let path = try #require(mount["mountPath"]?.string)
                if claimTemplates.contains(name) { continue }
                let volume = try #require(volumes.first { $0["name"]?.string == name }, "volume \(name) is mounted but not declared")
                let data: [YAMLPair]
                if let configMap = volume["configMap"] {
                    let source = try #require(Self.find(documents, kind: "ConfigMap", name: configMap["name"]!.string!), "ConfigMap \(configMap["name"]!.string!)")
                    data = source["data"]?.mapping ?? []
                } else if let secret = volume["secret"] {
                    let source = try #require(Self.find(documents, kind: "Secret", name: secret["secretName"]!.string!), "Secret \(secret["secretName"]!.string!)")
                    data = (source["stringData"]?.mapping ?? []) + (source["data"]?.mapping ?? [])
                } else if let claim = volume["persistentVolumeClaim"] {
                    #expect(Self.find(documents, kind: "PersistentVolumeClaim", name: claim["claimName"]!.string!) != nil)
                    continue
                } else {
                    continue  // emptyDir, hostPath
                }
                let source = volume["configMap"] ?? volume["secret"]!
                for item in source["items"]?.sequence ?? [] {
                    let key = try #require(item["key"]?.string)
                    let content = try #require(data.first { $0.key.string == key }?.value.string, "key \(key) of volume \(name)")
                    let file = mount["subPath"]?.string == item["path"]?.string ? path : "\(path)/\(item["path"]!.string!)"
                    mountedFiles[file] = content
                }
            }
            // Environment from Secrets and ConfigMaps: the object and its key exist. EdgeFleet's own
            // settings (EDGEFLEET_*) go to the configuration check below with their values.
            for variable in container["env"]?.sequence ?? [] {
                let name = variable["name"]?.string ?? ""
                if let value = variable["value"]?.string, name.hasPrefix("EDGEFLEET_") { settingsEnvironment[name] = value }
                if variable["valueFrom"]?["fieldRef"] != nil, name.hasPrefix("EDGEFLEET_") { settingsEnvironment[name] = "pod-name-7f9c" }
                for (field, kind) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
                    guard let reference = variable["valueFrom"]?[field] else { continue }
                    let object = try #require(Self.find(documents, kind: kind, name: reference["name"]!.string!), "\(kind) \(reference["name"]!.string!)")
                    let pairs = (object["stringData"]?.mapping ?? []) + (object["data"]?.mapping ?? [])
                    let keys = pairs.compactMap(\.key.string)
                    #expect(keys.contains(reference["key"]!.string!), "\(kind) \(reference["name"]!.string!) has no key \(reference["key"]!.string!)")
                    if name.hasPrefix("EDGEFLEET_"), let value = pairs.first(where: { $0.key.string == reference["key"]!.string! })?.value.string {
                        settingsEnvironment[name] = value
                    }
                }
            }
            let resources = try #require(container["resources"])
            for part in ["requests", "limits"] {
                #expect(resources[part]?["cpu"] != nil && resources[part]?["memory"] != nil, "resources.\(part)")
            }
            #expect(container["securityContext"]?["allowPrivilegeEscalation"]?.string == "false")
        }

        // The configuration file the container reads, loaded by the real binary with the
        // Secret's files where the manifest mounts them.
        let configPath = "/etc/edgefleet/\(binary == "edgefleet-agent" ? "agent" : "aggregator").yaml"
        let config = try #require(mountedFiles[configPath], "nothing mounted at \(configPath)")
        let directory = try temporaryDirectory("edgefleet-k8s")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var rendered = config
        // The HTTPS Secret ships placeholders (the operator brings the certificate): a real pair
        // stands in for them, so that the configuration is checked as it will run.
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        for (path, content) in mountedFiles where content.contains("(the server certificate") || content.contains("(its private key)") {
            mountedFiles[path] = try String(contentsOfFile: path.hasSuffix(".key") ? pki.serverKey : pki.serverCertificate, encoding: .utf8)
        }
        for (path, content) in mountedFiles where path != configPath {
            let local = directory + path
            try FileManager.default.createDirectory(atPath: (local as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try content.write(toFile: local, atomically: true, encoding: .utf8)
            rendered = rendered.replacingOccurrences(of: path, with: local)
        }
        for path in config.matches(of: /\/etc\/edgefleet\/[A-Za-z0-9._\/-]+/).map({ String($0.output) }) where mountedFiles[path] == nil {
            Issue.record("\(binary)'s configuration names \(path), which no volume provides")
        }
        try rendered.write(toFile: directory + "/config.yaml", atomically: true, encoding: .utf8)
        let checked = try await runAsync(
            try builtProduct(binary), ["--check-config", "--config", directory + "/config.yaml"], environment: settingsEnvironment)
        #expect(checked.status == 0, "\(checked.stderr)")
        if file == "aggregator-ha.yaml" {
            // Two replicas on PostgreSQL: the URL from the Secret, each replica's id from its pod's name.
            #expect(workload["kind"]?.string == "Deployment" && workload["spec"]?["replicas"]?.string == "2")
            #expect(checked.stdout.contains("database: postgres://"), "\(checked.stdout)")
            #expect(settingsEnvironment["EDGEFLEET_REPLICA_ID"] != nil)
        }

        // Ports: the probes and the Service name a container port; the configuration listens on it.
        let ports = containers.flatMap { $0["ports"]?.sequence ?? [] }
        let portNames = Set(ports.compactMap { $0["name"]?.string })
        for container in containers {
            for probe in ["readinessProbe", "livenessProbe"] {
                if let port = container[probe]?["httpGet"]?["port"]?.string {
                    #expect(portNames.contains(port) || ports.contains { $0["containerPort"]?.string == port }, "\(probe) port \(port)")
                    #expect(container[probe]?["httpGet"]?["path"]?.string == "/healthz")
                }
            }
        }
        for service in documents where service["kind"]?.string == "Service" {
            for pair in service["spec"]?["selector"]?.mapping ?? [] {
                #expect(podLabels[pair.key.string!] == pair.value.string, "the Service selects no pod")
            }
            for port in service["spec"]?["ports"]?.sequence ?? [] {
                let target = try #require(port["targetPort"]?.string)
                #expect(portNames.contains(target))
            }
            if workload["kind"]?.string == "StatefulSet" { #expect(workload["spec"]?["serviceName"]?.string == service["metadata"]?["name"]?.string) }
        }
        if binary == "edgefleet-aggregator" {
            let containerPort = try #require(ports.first?["containerPort"]?.string)
            #expect(config.contains("http: 0.0.0.0:\(containerPort)"))
            #expect(containers.contains { ($0["readinessProbe"]) != nil && ($0["livenessProbe"]) != nil })
        }
    }

    @Test("container build files: multi-stage, the release build, a slim runtime, not root", .ownThread, arguments: ["agent", "aggregator", "cli"])
    func containerfiles(_ name: String) throws {
        let text = try String(contentsOfFile: "\(Self.deploy)/container/Containerfile.\(name)", encoding: .utf8)
        let stages = text.split(separator: "\n").filter { $0.hasPrefix("FROM ") }
        #expect(stages.count == 2 && stages[0].hasSuffix(" AS build") && stages[1].contains("-slim"))
        let runtime = try #require(text.components(separatedBy: "\nFROM ").last)
        #expect(runtime.contains("COPY --from=build"))
        let user = try #require(runtime.split(separator: "\n").last { $0.hasPrefix("USER ") })
        #expect(!user.contains("root") && !user.hasPrefix("USER 0"), "\(user)")
        #expect(text.contains("scripts/build-release.sh"))
        let package = try String(contentsOfFile: repositoryRoot.path + "/Package.swift", encoding: .utf8)
        let built = text.matches(of: /\.build\/release\/([a-z-]+)/).map { String($0.output.1) }
        #expect(!built.isEmpty)
        for product in built { #expect(package.contains(".executable(name: \"\(product)\""), "\(product) is not a product") }
    }
}
