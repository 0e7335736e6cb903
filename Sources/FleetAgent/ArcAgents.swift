public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Reads `kubectl get deployments --namespace azure-arc --output json`: the Azure Arc agents
/// (clusterconnect-agent, config-agent, cluster-metadata-operator, ...) are deployments there,
/// and Azure sees the cluster only while they run.
public enum ArcAgents {
    struct List: Decodable {
        struct Item: Decodable {
            struct Metadata: Decodable { var name: String }
            struct Spec: Decodable { var replicas: Int? }
            struct Status: Decodable { var readyReplicas: Int? }
            var metadata: Metadata
            var spec: Spec?
            var status: Status?
        }
        var items: [Item]
    }

    public static func reading(_ output: String, name: String, observedAt: Date, durationMs: Int) -> CheckResult {
        func result(_ state: CheckState, _ text: String) -> CheckResult {
            CheckResult(name: name, state: state, observedAt: observedAt, durationMs: durationMs, output: String(text.prefix(256)))
        }
        // kubectl may write a warning on standard error before the document.
        guard let start = output.firstIndex(of: "{"), let end = output.lastIndex(of: "}"),
            let list = try? JSONDecoder().decode(List.self, from: Data(output[start...end].utf8))
        else {
            return result(.unknown, "kubectl's answer is not a list of deployments")
        }
        guard !list.items.isEmpty else { return result(.fail, "no Arc agent deployments in namespace azure-arc") }
        var notReady: [String] = []
        for item in list.items {
            let wanted = item.spec?.replicas ?? 1
            let ready = item.status?.readyReplicas ?? 0
            if ready < wanted { notReady.append("\(item.metadata.name) \(ready)/\(wanted)") }
        }
        if notReady.isEmpty { return result(.pass, "\(list.items.count)/\(list.items.count) Arc agent deployments ready") }
        return result(.fail, "not ready: " + notReady.sorted().joined(separator: ", "))
    }
}
