import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("the agent process against a real broker", .timeLimit(.minutes(2)))
struct AgentProcessTests {
    /// Subscribes to `site`'s topics only: another test's agent that keeps retrying a port its
    /// broker gave up (and the kernel gave to this test's broker) must not be read as this one.
    func observer(_ broker: MosquittoBroker, site: String) async throws -> (MQTTClient, MessageCollector) {
        try await observe(broker, "edgefleet/v1/sites/\(site)/#", connectTimeout: .seconds(10))
    }

    @Test("presence, heartbeats and status match the contract; SIGTERM publishes a clean offline presence")
    func publishesTheContract() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let (client, messages) = try await observer(broker, site: "store-0042")
        let agent = try AgentProcess(
            site: "store-0042", broker: broker, stateDir: stateDir,
            extra: ["--cluster-name", "aks-store-42", "--resource-group", "rg-stores"])

        let online = try FleetJSON.decode(Presence.self, from: try await messages.next("online presence") { $0.topic.hasSuffix("/presence") }.payload)
        #expect(online.site.rawValue == "store-0042" && online.state == .online && online.session == 1)
        #expect(online.heartbeatIntervalS == 1)
        let statusMessage = try await messages.next("status") { $0.topic == "edgefleet/v1/sites/store-0042/status" }
        #expect(statusMessage.retain == false || statusMessage.qos == .atLeastOnce)
        let status = try FleetJSON.decode(SiteStatus.self, from: statusMessage.payload)
        #expect(status.cluster?.name == "aks-store-42" && status.session == 1)
        let beats = try await messages.next(2, "two heartbeats") { $0.topic.hasSuffix("/heartbeat") }
            .map { try FleetJSON.decode(Heartbeat.self, from: $0.payload) }
        #expect(beats.map(\.seq) == [beats[0].seq, beats[0].seq + 1])
        #expect(beats.allSatisfy { $0.session == 1 && $0.azure.probe == "command" })
        #expect(online.instance != nil && beats.allSatisfy { $0.instance == online.instance } && status.instance == online.instance)
        #expect(beats.last?.azure.reachable == true)
        #expect((beats.last?.azure.lastContactAgeS ?? 99) < 5)

        #expect(await agent.terminateAndWait() == 0, "\(agent.output)")
        let offline = try FleetJSON.decode(Presence.self, from: try await messages.next("offline presence") { $0.topic.hasSuffix("/presence") }.payload)
        #expect(offline.state == .offline && offline.reason == .shutdown && offline.session == 1)
        await client.shutdown()
    }

    @Test("SIGKILL: the broker publishes the Last Will with the same session")
    func lastWillOnKill() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let (client, messages) = try await observer(broker, site: "s-kill")
        let agent = try AgentProcess(site: "s-kill", broker: broker, stateDir: stateDir)
        let online = try FleetJSON.decode(Presence.self, from: try await messages.next("online presence") { $0.topic.hasSuffix("/presence") }.payload)
        agent.kill()
        let will = try FleetJSON.decode(Presence.self, from: try await messages.next("the Last Will") { $0.topic.hasSuffix("/presence") }.payload)
        #expect(will.state == .offline && will.reason == .lost && will.session == online.session)
        await client.shutdown()
    }

    @Test("the last-contact age survives a restart and keeps growing; a new process is a new session")
    func contactSurvivesRestart() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let (client, messages) = try await observer(broker, site: "s-restart")

        // Azure reachable: the heartbeat shows a fresh contact.
        let first = try AgentProcess(site: "s-restart", broker: broker, stateDir: stateDir)
        let reached = try FleetJSON.decode(Heartbeat.self, from: try await messages.next("a reachable heartbeat") {
            $0.topic.hasSuffix("/heartbeat") && $0.payloadString.contains(#""reachable":true"#)
        }.payload)
        #expect(await first.terminateAndWait() == 0)
        let before = try #require(reached.azure.lastContactAgeS)

        // Restarted with Azure unreachable: the age continues from the saved contact.
        let second = try AgentProcess(site: "s-restart", broker: broker, stateDir: stateDir, probe: ["--probe-command", "false"])
        let beats = try await messages.next(2, "heartbeats after the restart") {
            $0.topic.hasSuffix("/heartbeat") && $0.payloadString.contains(#""session":2"#)
        }.map { try FleetJSON.decode(Heartbeat.self, from: $0.payload) }
        #expect(await second.terminateAndWait() == 0)
        let ages = beats.compactMap(\.azure.lastContactAgeS)
        #expect(ages.count == 2, "the restart lost the last contact: \(beats)")
        #expect(ages[0] >= before && ages[1] > ages[0])
        #expect(beats.allSatisfy { !$0.azure.reachable })
        // Every start draws a new instance (docs/contract.md, "Sessions"), so a restart whose
        // state file was lost (its counter back at 1) is still a new session to the aggregator.
        let instances = [reached.instance] + beats.map(\.instance)
        #expect(instances.allSatisfy { $0.map(AgentInstance.isValid) == true }, "\(instances)")
        #expect(beats[0].instance == beats[1].instance && beats[0].instance != reached.instance)
        await client.shutdown()
    }

    @Test("a stand-in Azure endpoint turned off and on flips reachable, freezes the contact, then resets the age")
    func probeFlips() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let azure = try StandInEndpoint(pki: pki)
        let (client, messages) = try await observer(broker, site: "s-flip")
        let agent = try AgentProcess(
            site: "s-flip", broker: broker, stateDir: stateDir,
            probe: ["--probe-endpoints", "localhost:\(azure.port)", "--probe-ca-file", pki.caCertificate, "--probe-timeout", "2s"])
        func heartbeat(_ what: String, _ predicate: @escaping @Sendable (Heartbeat) -> Bool) async throws -> Heartbeat {
            // (30 s: with the whole suite running, restarting openssl and the next probe can take a while.)
            let message = try await messages.next(timeout: .seconds(30), what) {
                $0.topic.hasSuffix("/heartbeat") && (try? FleetJSON.decode(Heartbeat.self, from: $0.payload)).map(predicate) == true
            }
            return try FleetJSON.decode(Heartbeat.self, from: message.payload)
        }
        let up = try await heartbeat("reachable") { $0.azure.reachable }
        #expect(up.azure.probe == "endpoints" && (up.azure.lastContactAgeS ?? 99) < 3)

        azure.stop()
        let down = try await heartbeat("unreachable") { !$0.azure.reachable }
        #expect(down.instance == up.instance && down.session == up.session, "up \(up), down \(down): \(agent.output.suffix(3000))")
        let later = try await heartbeat("a later unreachable heartbeat") { !$0.azure.reachable && $0.seq > down.seq + 1 }
        #expect(try #require(later.azure.lastContactAgeS, "\(up) \(down) \(agent.output.suffix(4000))") > (try #require(down.azure.lastContactAgeS, "\(up) \(down) \(agent.output.suffix(4000))")), "the contact must freeze while Azure is unreachable")

        try azure.start()
        let back = try await heartbeat("reachable again") { $0.azure.reachable && $0.seq > later.seq }
        let fresh = try await heartbeat("a fresh contact") { $0.azure.reachable && $0.seq > back.seq }
        #expect(try #require(fresh.azure.lastContactAgeS) < (try #require(later.azure.lastContactAgeS)))
        #expect(await agent.terminateAndWait() == 0)
        await client.shutdown()
    }

    @Test("a malformed certificate and a hung check become failed/unknown checks while the agent keeps running")
    func badInputsBecomeChecks() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let malformed = stateDir + "/malformed.pem"
        try "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".write(toFile: malformed, atomically: true, encoding: .utf8)
        let config = stateDir + "/agent.yaml"
        try """
            checks:
              - name: hangs
                command: [sleep, "30"]
                interval: 1s
                timeout: 300ms
              - name: fine
                command: [sh, -c, "echo fine"]
                interval: 1s
                capability: clusterAutoscaler
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let (client, messages) = try await observer(broker, site: "s-bad")
        let agent = try AgentProcess(site: "s-bad", broker: broker, stateDir: stateDir, extra: ["--config", config, "--certificate", malformed])
        let message = try await messages.next(timeout: .seconds(15), "a status with both checks") {
            $0.topic.hasSuffix("/status") && $0.payloadString.contains(#""name":"hangs""#)
        }
        let status = try FleetJSON.decode(SiteStatus.self, from: message.payload)
        let byName = Dictionary(uniqueKeysWithValues: status.checks.map { ($0.name, $0) })
        #expect(byName["hangs"]?.state == .unknown && byName["hangs"]?.output.contains("timed out") == true)
        #expect(byName["fine"]?.state == .pass)
        #expect(byName["certificates"]?.state == .fail && byName["certificates"]?.output.contains("malformed.pem") == true)
        #expect(status.capabilities["clusterAutoscaler"] == true)
        // Still alive and beating after all that.
        let beat = try await messages.next(timeout: .seconds(10), "a heartbeat after the bad inputs") { $0.topic.hasSuffix("/heartbeat") }
        #expect(try FleetJSON.decode(Heartbeat.self, from: beat.payload).certificates?.error?.contains("malformed.pem") == true)
        #expect(agent.process.isRunning)
        #expect(await agent.terminateAndWait() == 0)
        await client.shutdown()
    }

    @Test("a status in flight when the link drops does not hold back the changes after it: they are spooled")
    func inFlightAtTheCut() async throws {
        let site = try await CountingAgentSite("s-inflight", observer: observer)
        defer { site.remove() }
        let (proxy, messages) = (site.proxy, site.messages)
        _ = try await messages.next(timeout: .seconds(15), "a first status") { $0.topic == "edgefleet/v1/sites/s-inflight/status" }
        // The link stalls: the next status is handed over but its acknowledgement never comes
        // (two check intervals, so a status is in flight), then the link drops.
        proxy.freeze()
        try await Task.sleep(for: .milliseconds(700))
        proxy.takeDown()
        let stateDir = site.stateDir
        try await withTimeout(.seconds(20), "status changes spooled after the cut") {
            while CountingAgentSite.spooled(in: stateDir) < 3 { try await Task.sleep(for: .milliseconds(50)) }
        }
        proxy.thaw()
        proxy.restore()
        #expect(await site.agent.terminateAndWait() == 0)
        await site.client.shutdown()
    }

    @Test("a stalled link (TCP up, nothing acknowledged) does not hold the checks: they run on time; thawed, every change arrives in order, once")
    func stalledLink() async throws {
        let site = try await CountingAgentSite("s-stall", observer: observer)
        defer { site.remove() }
        let (proxy, messages, counter) = (site.proxy, site.messages, site.counter)
        @Sendable func counterValue(_ m: MQTTMessage) -> Int? {
            (try? FleetJSON.decode(SiteStatus.self, from: m.payload))?.checks.first { $0.name == "counter" }.flatMap { Int($0.output) }
        }
        @Sendable func runs() -> Int { Int((try? String(contentsOfFile: counter, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0 }
        _ = try await messages.next(timeout: .seconds(15), "a first status") { counterValue($0) != nil }
        proxy.freeze()
        let frozenAt = runs()
        // Every 300 ms a run, each a change whose acknowledgement cannot come: ten more runs. Before
        // the check loop waited for the first one's acknowledgement until the keepalive (30 s)
        // declared the connection dead.
        try await withTimeout(.seconds(20), "ten check runs while the link is stalled") {
            while runs() < frozenAt + 10 { try await Task.sleep(for: .milliseconds(50)) }
        }
        let stalledRuns = runs()
        proxy.thaw()
        _ = try await messages.next(timeout: .seconds(30), "the changes made while stalled") { (counterValue($0) ?? 0) >= stalledRuns }
        #expect(await site.agent.terminateAndWait() == 0)
        let values = messages.received.filter { $0.topic.hasSuffix("/status") }.compactMap(counterValue)
        var collapsed: [Int] = []
        for v in values where collapsed.last != v { collapsed.append(v) }
        #expect(collapsed == Array(collapsed[0]...collapsed[collapsed.count - 1]), "statuses lost, duplicated or out of order: \(values)")
        #expect(Set(values).count == collapsed.count, "\(values)")
        await site.client.shutdown()
    }

    @Test("a full state disk during a broker outage: every change that cannot be spooled is counted in spoolDropped, none arrives twice")
    func fullDiskSpool() async throws {
        let disk = try SmallDisk(megabytes: 1)
        defer { disk.remove() }
        try FileManager.default.createDirectory(atPath: disk.path + "/state", withIntermediateDirectories: true)
        let site = try await CountingAgentSite("s-full", observer: observer, stateDir: disk.path + "/state")
        defer { site.remove() }
        let (proxy, messages, agent, client, counter) = (site.proxy, site.messages, site.agent, site.client, site.counter)
        @Sendable func counterValue(_ m: MQTTMessage) -> Int? {
            (try? FleetJSON.decode(SiteStatus.self, from: m.payload))?.checks.first { $0.name == "counter" }.flatMap { Int($0.output) }
        }
        _ = try await messages.next(timeout: .seconds(15), "a first status") { $0.topic.hasSuffix("/status") && counterValue($0) != nil }
        proxy.takeDown()
        let stateDir = site.stateDir
        try await withTimeout(.seconds(40), "two changes spooled during the outage") {
            while CountingAgentSite.spooled(in: stateDir) < 2 { try await Task.sleep(for: .milliseconds(50)) }
        }
        try disk.fill()
        // The check keeps changing (every 300 ms); none of it can be spooled now.
        try await withTimeout(.seconds(30), "changes the agent could not spool") {
            while agent.output.components(separatedBy: "cannot spool a status change").count - 1 < 3 { try await Task.sleep(for: .milliseconds(100)) }
        }
        proxy.restore()
        let beforeRestore = Int(try String(contentsOfFile: counter, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)) ?? .max
        _ = try await messages.next(timeout: .seconds(30), "a status newer than the outage") {
            $0.topic.hasSuffix("/status") && (counterValue($0) ?? 0) > beforeRestore
        }
        disk.free()
        #expect(await agent.terminateAndWait() == 0)
        let statuses = messages.received.filter { $0.topic.hasSuffix("/status") }.compactMap { try? FleetJSON.decode(SiteStatus.self, from: $0.payload) }
        let values = statuses.compactMap { $0.checks.first { $0.name == "counter" }.flatMap { Int($0.output) } }
        var collapsed: [Int] = []
        for v in values where collapsed.last != v { collapsed.append(v) }
        #expect(Set(values).count == collapsed.count, "a change arrived twice: \(values)")
        #expect(collapsed == collapsed.sorted(), "out of order: \(values)")
        // Every change that did not arrive is counted in spoolDropped, and only those.
        let missing = zip(collapsed, collapsed.dropFirst()).reduce(0) { $0 + ($1.1 - $1.0 - 1) }
        let reported = statuses.compactMap(\.spoolDropped).reduce(0, +)
        #expect(missing > 0, "nothing was dropped: the disk was not full")
        #expect(reported == missing, "\(missing) changes missing, \(reported) reported as dropped: \(values)")
        await client.shutdown()
    }

    @Test("a check that starts a daemon with setsid leaks nothing: the agent, a child subreaper, ends and reaps it after each run")
    func setsidCheck() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let marker = "600.\(UInt32.random(in: 1000...999_999))"
        try """
            checks:
              - name: daemon
                command: [sh, -c, "setsid sleep \(marker) > /dev/null 2>&1 & echo started"]
                interval: 200ms
            """.write(toFile: stateDir + "/agent.yaml", atomically: true, encoding: .utf8)
        let agent = try AgentProcess(site: "s-setsid", broker: broker, stateDir: stateDir, extra: ["--config", stateDir + "/agent.yaml"])
        // Let it run the check some 15 times (before: one more sleep left behind per run).
        try await Task.sleep(for: .seconds(3))
        let daemons = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "sleep \(marker)"]).stdout.split(separator: "\n")
        let living = daemons.filter { !isZombie(pid_t($0) ?? 0) }
        #expect(living.count <= 1, "\(living.count) daemons alive after 3 s of 200 ms checks")
        // Orphans handed to the agent are reaped: at most the one of the run in progress is a zombie.
        let children = try await runAsync(URL(fileURLWithPath: "/usr/bin/ps"), ["--ppid", "\(agent.process.pid)", "-o", "stat="]).stdout
        let zombies = children.split(separator: "\n").filter { $0.hasPrefix("Z") }.count
        #expect(zombies <= 1, "\(zombies) zombie children of the agent")
        #expect(await agent.terminateAndWait() == 0)
        let after = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "sleep \(marker)"]).stdout.split(separator: "\n")
        #expect(after.filter { !isZombie(pid_t($0) ?? 0) }.isEmpty, "a daemon outlived the agent")
    }

    @Test("status changes made during a broker outage arrive in order after it, none lost, none duplicated")
    func outageSpool() async throws {
        let site = try await CountingAgentSite("s-outage", observer: observer)
        defer { site.remove() }
        let (proxy, messages, agent, client, counter) = (site.proxy, site.messages, site.agent, site.client, site.counter)
        @Sendable func counterValue(_ m: MQTTMessage) -> Int? {
            (try? FleetJSON.decode(SiteStatus.self, from: m.payload))?.checks.first { $0.name == "counter" }.flatMap { Int($0.output) }
        }
        _ = try await messages.next(timeout: .seconds(15), "a first status") { $0.topic.hasSuffix("/status") && counterValue($0) != nil }

        proxy.takeDown()  // the site's link to the broker is down; the check keeps running
        let deadline = ContinuousClock.now + .seconds(40)  // a loaded machine notices the cut link late
        while CountingAgentSite.spooled(in: site.stateDir) < 4 {
            #expect(ContinuousClock.now < deadline, "no status changes were spooled during the outage")
            if ContinuousClock.now >= deadline { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        proxy.restore()
        // After the reconnect the spool drains; wait until a status newer than the outage arrives.
        let spooledMax = try String(contentsOfFile: counter, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try await messages.next(timeout: .seconds(30), "a status after the outage") {
            $0.topic.hasSuffix("/status") && (counterValue($0) ?? 0) > (Int(spooledMax) ?? .max)
        }
        #expect(await agent.terminateAndWait() == 0)
        let values = messages.received.filter { $0.topic.hasSuffix("/status") }.compactMap(counterValue)
        // The reconnect may announce the latest status once more: collapse repeats, then
        // every value must appear, in order, once.
        var collapsed: [Int] = []
        for v in values where collapsed.last != v { collapsed.append(v) }
        #expect(collapsed == Array(collapsed[0]...collapsed[collapsed.count - 1]), "statuses lost, duplicated or out of order: \(values)")
        #expect(Set(values).count == collapsed.count)
        #expect(values.count >= 6)
        await client.shutdown()
    }
}

/// An agent behind a cuttable proxy whose one check's output changes on every run (every
/// run is a status change), with an observer straight on the broker (never cut).
final class CountingAgentSite {
    let broker: MosquittoBroker
    let proxy: TCPProxy
    let stateDir: String
    let counter: String
    let client: MQTTClient
    let messages: MessageCollector
    let agent: AgentProcess

    /// `stateDir`: where the agent keeps its state and spool (a temporary directory unless given);
    /// the check's counter is kept elsewhere, so that a full state disk does not stop the changes.
    init(_ site: String, observer: (MosquittoBroker, String) async throws -> (MQTTClient, MessageCollector), stateDir given: String? = nil) async throws {
        broker = try await MosquittoBroker.start()
        proxy = try TCPProxy(upstreamPort: broker.port)
        stateDir = try given ?? temporaryDirectory()
        counter = try temporaryDirectory() + "/counter"
        let config = (counter as NSString).deletingLastPathComponent + "/agent.yaml"
        try """
            checks:
              - name: counter
                command: [sh, -c, "n=$(cat \(counter) 2>/dev/null || echo 0); n=$((n+1)); echo $n > \(counter); echo $n"]
                interval: 300ms
            """.write(toFile: config, atomically: true, encoding: .utf8)
        (client, messages) = try await observer(broker, site)
        // The log beside the counter, off the state disk (which a test may fill).
        agent = try AgentProcess(
            site: site, broker: broker, brokerURL: proxy.url, stateDir: stateDir, extra: ["--config", config],
            logDirectory: (counter as NSString).deletingLastPathComponent)
    }

    /// Status changes waiting in the on-disk spool of the agent whose state is in `stateDir`.
    static func spooled(in stateDir: String) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: stateDir + "/spool"))?.filter { $0.hasSuffix(".json") }.count ?? 0
    }

    func remove() {
        proxy.stop()
        broker.stop()
        try? FileManager.default.removeItem(atPath: stateDir)
        try? FileManager.default.removeItem(atPath: (counter as NSString).deletingLastPathComponent)
    }
}
