import FleetCore
import Foundation
import TestSupport
import Testing

/// The dashboard: through real HTTP, and loaded in headless Chromium.
@Suite("the dashboard", .timeLimit(.minutes(3)))
struct DashboardTests {
    @Test("signing in with a token sets a cookie; the pages show the fleet; a cancel button cancels; no token, no page")
    func pagesAndButtons() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        let id = try await f.submit("site-semi", "cluster.upgrade", ["kubernetesVersion": "1.30.4"])

        let anonymous = try await HTTP.get(port: f.port, "/")
        #expect(anonymous.status == 401 && anonymous.headers["content-type"]?.hasPrefix("text/html") == true)
        #expect(anonymous.text.contains("/?token="))
        #expect(try await HTTP.get(port: f.port, "/?token=wrong-token-0123456789abcdef").status == 403)

        let login = try await HTTP.get(port: f.port, "/?token=\(OperatorFixture.token)")
        #expect(login.status == 303 && login.headers["location"] == "/")
        let setCookie = try #require(login.headers["set-cookie"])
        #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"))
        let cookie = String(setCookie.split(separator: ";")[0])

        let fleet = try await HTTP.get(port: f.port, "/", headers: ["Cookie": cookie])
        #expect(fleet.status == 200)
        #expect(fleet.headers["content-security-policy"]?.contains("default-src 'none'") == true)
        for mode in ["connected", "semi-connected", "disconnected", "unknown"] {
            #expect(fleet.text.contains("data-mode='\(mode)'"), "no \(mode) row")
        }
        #expect(!fleet.text.contains("http://") && !fleet.text.contains("https://"), "no external assets")
        // Nearest deadline first: the site past its deadline, then the semi-connected one; unknown last.
        let order = ["site-gone", "site-semi", "site-connected", "site-new"].compactMap { fleet.text.range(of: "data-site='\($0)'")?.lowerBound }
        #expect(order.count == 4 && order == order.sorted())
        let bySite = try await HTTP.get(port: f.port, "/?sort=site", headers: ["Cookie": cookie]).text
        #expect(bySite.range(of: "data-site='site-connected'")!.lowerBound < bySite.range(of: "data-site='site-gone'")!.lowerBound)

        let site = try await HTTP.get(port: f.port, "/sites/site-semi", headers: ["Cookie": cookie])
        #expect(site.status == 200 && site.text.contains("What works here now") && site.text.contains("autoscaler"))
        #expect(site.text.contains("data-operation='\(id)'"))
        #expect(try await HTTP.get(port: f.port, "/sites/nowhere", headers: ["Cookie": cookie]).status == 404)

        let queue = try await HTTP.get(port: f.port, "/queue?site=site-semi", headers: ["Cookie": cookie])
        #expect(queue.text.contains("action='/ui/operations/\(id)/cancel'"))
        // Read-only when reads are public and nobody signed in: no buttons.
        #expect(try await HTTP.get(port: f.port, "/queue?state=bogus", headers: ["Cookie": cookie]).status == 400)

        // The button: a form post with the cookie; without it, refused.
        let form = Array("back=%2Fqueue%3Fsite%3Dsite-semi".utf8)
        let refused = try await HTTP.request("POST", port: f.port, "/ui/operations/\(id)/cancel", headers: ["Content-Type": "application/x-www-form-urlencoded"], body: form)
        #expect(refused.status == 401)
        let pressed = try await HTTP.request(
            "POST", port: f.port, "/ui/operations/\(id)/cancel", headers: ["Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"], body: form)
        #expect(pressed.status == 303 && pressed.headers["location"] == "/queue?site=site-semi")
        let cancelled = try await f.operation(id)
        #expect(cancelled["state"] as? String == "cancelled")
        #expect(((cancelled["history"] as? [[String: Any]])?.last?["note"] as? String)?.contains("dashboard") == true)
    }

    @Test("public reads: the pages open without a token and show no buttons")
    func readOnly() async throws {
        let f = try await OperatorFixture.start(publicReads: true)
        defer { f.stop() }
        let id = try await f.submit("quiet", "extension.install", ["name": "x"])
        let queue = try await HTTP.get(port: f.port, "/queue")
        #expect(queue.status == 200 && queue.text.contains("data-operation='\(id)'"))
        #expect(!queue.text.contains("/ui/operations/") && queue.text.contains("read only"))
    }

    @Test("headless Chromium renders the site table with all four modes; the screenshot is a real PNG")
    func chromium() async throws {
        let browser = try #require(findExecutable("chromium"), "chromium is missing: .ci/run installs Debian's chromium package")
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        _ = try await f.submit("site-semi", "cluster.upgrade", ["kubernetesVersion": "1.30.4"])
        _ = try await f.submit("site-gone", "extension.install", ["name": "monitoring"])

        let url = "http://127.0.0.1:\(f.port)/?token=\(OperatorFixture.token)"
        let profile = f.directory + "/chromium"
        let common = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=\(profile)"]
        let dom = try await runAsync(URL(fileURLWithPath: browser), common + ["--dump-dom", url])
        #expect(dom.status == 0, "\(dom.stderr.suffix(500))")
        for mode in ["connected", "semi-connected", "disconnected", "unknown"] {
            #expect(dom.stdout.contains(#"data-mode="\#(mode)""#), "the DOM has no \(mode) row")
        }
        #expect(dom.stdout.contains(#"<table id="sites">"#) && dom.stdout.contains("signed in"))

        let screenshot = f.directory + "/dashboard.png"
        let shot = try await runAsync(URL(fileURLWithPath: browser), common + ["--window-size=1280,760", "--hide-scrollbars", "--screenshot=\(screenshot)", url])
        #expect(shot.status == 0, "\(shot.stderr.suffix(500))")
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 20_000, "\(png.count) bytes")
        // `make screenshot` refreshes the committed one.
        if let target = ProcessInfo.processInfo.environment["EDGEFLEET_SCREENSHOT"] {
            try png.write(to: URL(fileURLWithPath: target))
        }
    }
}
