import ArgumentParser
import FleetCore
import Foundation
import Logging
import MQTT
import Synchronization

/// Heartbeat traffic for the aggregator benchmarks, as many sites' agents would send it
/// (QoS 0, the contract's heartbeat QoS), from one connection.
struct Heartbeats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heartbeats",
        abstract: "Publishes ROUNDS heartbeats for each of SITES sites as fast as possible (or at --rate), then one for --marker.")

    @Option(help: "Broker URL.") var broker: String = "mqtt://127.0.0.1:1883"
    @Option(help: "Topic root.") var root: String = "edgefleet/v1"
    @Option(help: "How many sites.") var sites: Int = 10_000
    @Option(help: "Index of the first site (so that several publishers can share a fleet).") var offset: Int = 0
    @Option(help: "Heartbeats per site.") var rounds: Int = 1
    @Option(help: "Heartbeats per second; 0 = as fast as the client can.") var rate: Int = 0
    @Option(help: "lastContactAgeS to report.") var age: Double = 0
    @Option(help: "A site whose heartbeat is sent last (its view appearing means all before it were processed).")
    var marker: String?
    @Flag(help: "First announce every site with its presence (a site exists once it has announced itself).")
    var announce = false
    @Option(help: "With --announce, also a status carrying these labels (KEY=VALUE,...).") var labels: String?

    func run() async throws {
        let client = try await connect(broker, "bench-heartbeats-\(getpid())")
        let session = UInt64(Date().timeIntervalSince1970 * 1000)
        let names = (offset..<offset + sites).map(siteName)
        let start = Date()
        var sent = 0
        let pacer = Pacer(rate: rate)
        if announce {
            for name in names {
                try await client.publish(
                    "\(root)/sites/\(name)/presence", payload: presenceJSON(site: name, session: session, at: RFC3339.format(Date())),
                    qos: .atLeastOnce, retain: true)
                if let labels {
                    let pairs = Dictionary(uniqueKeysWithValues: labels.split(separator: ",").map { item in
                        let kv = item.split(separator: "=", maxSplits: 1)
                        return (String(kv[0]), String(kv.count > 1 ? kv[1] : ""))
                    })
                    let status = SiteStatus(
                        site: try SiteID(name), session: session, at: Date(),
                        cluster: ClusterInfo(name: "aks-\(name)", resourceGroup: "rg-bench"), labels: pairs)
                    try await client.publish("\(root)/sites/\(name)/status", payload: try FleetJSON.encode(status), qos: .atLeastOnce, retain: true)
                }
            }
        }
        for round in 0..<rounds {
            let sentAt = RFC3339.format(Date())
            for name in names {
                let payload = heartbeatJSON(site: name, session: session, seq: UInt64(round + 1), sentAt: sentAt, age: age)
                try await client.publish("\(root)/sites/\(name)/heartbeat", payload: payload, qos: .atMostOnce)
                sent += 1
                await pacer.tick()
            }
        }
        if let marker {
            try await client.publish(
                "\(root)/sites/\(marker)/presence", payload: presenceJSON(site: marker, session: session, at: RFC3339.format(Date())),
                qos: .atLeastOnce, retain: true)
            let payload = heartbeatJSON(site: marker, session: session, seq: 1, sentAt: RFC3339.format(Date()), age: 0)
            try await client.publish("\(root)/sites/\(marker)/heartbeat", payload: payload, qos: .atLeastOnce)
        }
        let end = Date()
        print(#"{"start":\#(start.timeIntervalSince1970),"end":\#(end.timeIntervalSince1970),"published":\#(sent)}"#)
        await client.shutdown()
    }
}

/// While heartbeats for every site flow at a steady rate, flips sites from connected to
/// semi-connected (a heartbeat reporting an old contact) and measures how long each
/// flip takes to reach the site's retained view.
struct ModeChangeLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mode-change-latency",
        abstract: "Steady heartbeats for SITES sites at RATE/s; every FLIP-EVERY ms one site reports an old contact; prints latency percentiles.")

    @Option(help: "Broker URL.") var broker: String = "mqtt://127.0.0.1:1883"
    @Option(help: "Topic root.") var root: String = "edgefleet/v1"
    @Option(help: "How many sites (already known to the aggregator, connected).") var sites: Int = 100_000
    @Option(help: "Heartbeats per second.") var rate: Int = 10_000
    @Option(help: "Seconds to run.") var duration: Double = 30
    @Option(help: "Milliseconds between flips.") var flipEvery: Int = 100
    @Option(help: "lastContactAgeS a flipped site reports (beyond connectedWithin).") var flipAge: Double = 3600

    func run() async throws {
        let publisher = try await connect(broker, "bench-load-\(getpid())")
        let observer = try await connect(broker, "bench-observer-\(getpid())")
        let flipped = Mutex<[String: ContinuousClock.Instant]>([:])
        let latencies = Mutex<[Double]>([])
        try await observer.subscribe(to: "\(root)/fleet/sites/+", qos: .atLeastOnce)
        let prefix = "\(root)/fleet/sites/"
        let watcher = Task {
            let decoder = FleetJSON.decoder()
            for await message in observer.messages where message.topic.hasPrefix(prefix) {
                let site = String(message.topic.dropFirst(prefix.count))
                guard let sentAt = flipped.withLock({ $0[site] }),
                    let view = try? decoder.decode(SiteView.self, from: Data(message.payload)), view.mode == .semiConnected
                else { continue }
                let latency = (ContinuousClock.now - sentAt).secondsValue
                flipped.withLock { _ = $0.removeValue(forKey: site) }
                latencies.withLock { $0.append(latency) }
            }
        }

        let session = UInt64(Date().timeIntervalSince1970 * 1000)
        let names = (0..<sites).map(siteName)
        var seq = [UInt64](repeating: 0, count: sites)
        var skip = Set<Int>()
        let pacer = Pacer(rate: rate)
        let start = ContinuousClock.now
        let end = start + .milliseconds(Int64(duration * 1000))
        var nextFlip = start + .seconds(1)
        var index = 0
        var sent = 0
        var flips = 0
        var sentAt = RFC3339.format(Date())
        while ContinuousClock.now < end {
            if ContinuousClock.now >= nextFlip {
                var victim = Int.random(in: 0..<sites)
                while skip.contains(victim) { victim = Int.random(in: 0..<sites) }
                skip.insert(victim)
                seq[victim] += 1
                let payload = heartbeatJSON(site: names[victim], session: session, seq: seq[victim], sentAt: sentAt, age: flipAge)
                flipped.withLock { $0[names[victim]] = ContinuousClock.now }
                try await publisher.publish("\(root)/sites/\(names[victim])/heartbeat", payload: payload, qos: .atMostOnce)
                flips += 1
                nextFlip = nextFlip + .milliseconds(flipEvery)
            }
            index = (index + 1) % sites
            if index == 0 { sentAt = RFC3339.format(Date()) }
            if skip.contains(index) { continue }
            seq[index] += 1
            let payload = heartbeatJSON(site: names[index], session: session, seq: seq[index], sentAt: sentAt, age: 0)
            try await publisher.publish("\(root)/sites/\(names[index])/heartbeat", payload: payload, qos: .atMostOnce)
            sent += 1
            await pacer.tick()
        }
        let elapsed = (ContinuousClock.now - start).secondsValue
        // Give the last flips up to 5 s to arrive; the ones that do not count as lost.
        let grace = ContinuousClock.now + .seconds(5)
        while flipped.withLock({ !$0.isEmpty }), ContinuousClock.now < grace { try await Task.sleep(for: .milliseconds(50)) }
        watcher.cancel()
        let measured = latencies.withLock { $0 }.sorted()
        func percentile(_ p: Double) -> Double {
            measured.isEmpty ? .nan : measured[min(measured.count - 1, Int((Double(measured.count) * p).rounded(.up)) - 1)]
        }
        let lost = flipped.withLock { $0.count }
        print(
            #"{"heartbeats":\#(sent),"seconds":\#(elapsed),"heartbeatsPerSecond":\#(Double(sent) / elapsed),"flips":\#(flips),"#
                + #""observed":\#(measured.count),"lost":\#(lost),"p50":\#(percentile(0.5)),"p99":\#(percentile(0.99)),"#
                + #""max":\#(measured.last ?? .nan)}"#)
        await publisher.shutdown()
        await observer.shutdown()
    }
}

func siteName(_ index: Int) -> String {
    let digits = String(index)
    return "site-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
}

func presenceJSON(site: String, session: UInt64, at: String) -> [UInt8] {
    Array(
        #"{"schema":"edgefleet.presence/1","site":"\#(site)","state":"online","session":\#(session),"heartbeatIntervalS":10,"at":"\#(at)"}"#
            .utf8)
}

func heartbeatJSON(site: String, session: UInt64, seq: UInt64, sentAt: String, age: Double) -> [UInt8] {
    Array(
        #"{"schema":"edgefleet.heartbeat/1","site":"\#(site)","session":\#(session),"seq":\#(seq),"sentAt":"\#(sentAt)","azure":{"reachable":\#(age == 0),"lastContactAgeS":\#(age),"probe":"endpoints"}}"#
            .utf8)
}

func connect(_ broker: String, _ id: String) async throws -> MQTTClient {
    var logger = Logger(label: "edgefleet.bench")
    logger.logLevel = .warning
    let client = try MQTTClient(
        configuration: MQTTConfiguration(
            broker: try BrokerURL(parsing: broker), clientID: id, keepAlive: .seconds(60), receiveMaximum: 1000, sendMaximum: 1000),
        logger: logger)
    try await client.connect()
    return client
}

/// Spreads `rate` events per second evenly, in steps of 1 ms; rate 0 never waits.
final class Pacer {
    let rate: Int
    let start = ContinuousClock.now
    var count = 0

    init(rate: Int) { self.rate = rate }

    func tick() async {
        guard rate > 0 else { return }
        count += 1
        let due = start + .nanoseconds(Int64(Double(count) / Double(rate) * 1e9))
        if due - ContinuousClock.now > .milliseconds(1) { try? await Task.sleep(until: due, clock: .continuous) }
    }
}
