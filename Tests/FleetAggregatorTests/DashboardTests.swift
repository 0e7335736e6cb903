import FleetAggregator
import FleetCore
import FleetSimulator
import Foundation
import TestSupport
import Testing

/// The dashboard: through real HTTP, and loaded in headless Chromium.
@Suite("the dashboard", .timeLimit(.minutes(3)))
struct DashboardTests {
    @Test("the sign-in cookie is a random session, never the token; sign-out (same origin only) ends it on the server; it expires")
    func sessions() async throws {
        // Long enough that a loaded machine uses the session before it ends (3 s was not), short enough to see it end.
        let f = try await OperatorFixture.start(extra: ["--dashboard-session", "10s"])
        defer { f.stop() }
        let login = try await HTTP.get(port: f.port, "/?token=\(OperatorFixture.token)")
        let setCookie = try #require(login.headers["set-cookie"])
        #expect(!setCookie.contains(OperatorFixture.token), "the cookie holds the token: \(setCookie)")
        #expect(setCookie.contains("Max-Age=10") && setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict"))
        let cookie = String(setCookie.split(separator: ";")[0])
        #expect(try await HTTP.get(port: f.port, "/", headers: ["Cookie": cookie]).status == 200)
        // Another page cannot sign the operator out.
        let foreign = try await HTTP.request("POST", port: f.port, "/ui/logout", headers: ["Cookie": cookie, "Origin": "http://evil.example"])
        #expect(foreign.status == 403)
        #expect(try await HTTP.get(port: f.port, "/", headers: ["Cookie": cookie]).status == 200)
        // Signing out ends the session on the server: the same cookie, replayed, is refused.
        let out = try await HTTP.request("POST", port: f.port, "/ui/logout", headers: ["Cookie": cookie, "Sec-Fetch-Site": "same-origin"])
        #expect(out.status == 303 && out.headers["set-cookie"]?.contains("Max-Age=0") == true)
        #expect(try await HTTP.get(port: f.port, "/", headers: ["Cookie": cookie]).status == 401)
        // A new session expires by itself.
        let again = try await HTTP.get(port: f.port, "/?token=\(OperatorFixture.token)")
        let second = String(try #require(again.headers["set-cookie"]).split(separator: ";")[0])
        #expect(second != cookie)
        #expect(try await HTTP.get(port: f.port, "/", headers: ["Cookie": second]).status == 200)
        try await withTimeout(.seconds(40), "the session to expire") {
            while try await HTTP.get(port: f.port, "/", headers: ["Cookie": second]).status == 200 { try await Task.sleep(for: .milliseconds(250)) }
        }
        #expect(try await HTTP.get(port: f.port, "/", headers: ["Cookie": second]).status == 401)
    }

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
        #expect(try await HTTP.get(port: f.port, "/?token=wrong-token-0123456789abcdef").status == 401)

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
        #expect(try await HTTP.get(port: f.port, "/queue?state=bogus", headers: ["Cookie": cookie]).status == 400)

        // What sites and operators send is shown as text, never as markup.
        let hostile = try SimulatedSite("site-hostile", brokerURL: f.fleet.broker.url)
        try await hostile.connect()
        try await hostile.status(
            cluster: ClusterInfo(name: "aks'\"><img src=x onerror=alert(1)>"),
            checks: [CheckResult(name: "<b>x</b>", state: .fail, observedAt: Date(), durationMs: 1, output: "<script>alert(1)</script>")])
        defer { Task { await hostile.shutdown() } }
        let hostileID = try await f.submit("site-hostile", "extension.install", ["name": "<script>alert(2)</script>"])
        let page = try await withTimeout(.seconds(10), "the hostile site's page") { () -> String in
            while true {
                let response = try await HTTP.get(port: f.port, "/sites/site-hostile", headers: ["Cookie": cookie])
                if response.status == 200, response.text.contains("alert(1)") { return response.text }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(!page.contains("<script>") && !page.contains("<img") && !page.contains("<b>x"))
        #expect(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && page.contains("aks&#39;&quot;&gt;&lt;img"))
        #expect(page.contains("data-operation='\(hostileID)'") && page.contains("&lt;script&gt;alert(2)"))

        // The button: a form post with the cookie; without it, refused.
        let form = Array("back=%2Fqueue%3Fsite%3Dsite-semi".utf8)
        let refused = try await HTTP.request("POST", port: f.port, "/ui/operations/\(id)/cancel", headers: ["Content-Type": "application/x-www-form-urlencoded"], body: form)
        #expect(refused.status == 401)
        let pressed = try await HTTP.request(
            "POST", port: f.port, "/ui/operations/\(id)/cancel", headers: ["Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"], body: form)
        #expect(pressed.status == 303 && pressed.headers["location"] == "/queue?site=site-semi")
        #expect(try await f.state(id) == "cancelled")

        // A post from another origin (another port of the same host counts) is refused; the
        // way back never leads to another host.
        let other = try await f.submit("site-semi", "extension.install", ["name": "csrf"])
        let formHeaders = ["Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"]
        for headers in [["Origin": "http://127.0.0.1:1"], ["Sec-Fetch-Site": "same-site"], ["Origin": "null"]] {
            let forged = try await HTTP.request(
                "POST", port: f.port, "/ui/operations/\(other)/cancel", headers: formHeaders.merging(headers) { $1 }, body: form)
            #expect(forged.status == 403, "\(headers)")
        }
        #expect(try await f.state(other) == "queued")
        for (back, expected) in [("%2F%2Fevil.example", "/queue"), ("%2F%5Cevil.example", "/queue"), ("%2F%09%2Fevil.example", "/queue"),
            ("https%3A%2F%2Fevil.example", "/queue"), ("%2Fsites%2Fsite-semi", "/sites/site-semi")]
        {
            let again = try await f.submit("site-semi", "extension.install", ["name": "back-\(expected.count)-\(back.count)"])
            let sameOrigin = formHeaders.merging(["Origin": "http://127.0.0.1:\(f.port)", "Sec-Fetch-Site": "same-origin"]) { $1 }
            let response = try await HTTP.request(
                "POST", port: f.port, "/ui/operations/\(again)/cancel", headers: sameOrigin, body: Array("back=\(back)".utf8))
            #expect(response.status == 303 && response.headers["location"] == expected, "back=\(back): \(response.headers["location"] ?? "")")
        }
        let cancelled = try await f.operation(id)
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

    @Test("headless Chromium draws the history: the fleet's 30 days and budget ranking, a site's timeline; patterns and names besides colours, no script")
    func historyPictures() async throws {
        let browser = try #require(findExecutable("chromium"), "chromium is missing: .ci/run installs Debian's chromium package")
        // 40 sites with 35 days of made-up past (the generator the history benchmark uses).
        let now = Date()
        let f = try await OperatorFixture.start(seed: { stores in
            let generator = HistoryGenerator()
            for index in 0..<40 {
                let site = try SiteID("store-\(String(format: "%03d", index))")
                _ = try stores.events.append(generator.events(site: site, index: index, from: now.addingTimeInterval(-35 * 86_400), to: now))
            }
        })
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }

        let fleetPage = try await HTTP.get(port: f.port, "/", token: OperatorFixture.token)
        #expect(fleetPage.status == 200 && !fleetPage.text.contains("<script"))
        #expect(fleetPage.headers["content-security-policy"]?.hasPrefix("default-src 'none'") == true)
        #expect(fleetPage.text.contains("id=fleet-chart") && fleetPage.text.contains("id=budget-ranking"))
        for mode in ConnectivityMode.allCases where mode != .unknown {
            #expect(fleetPage.text.contains("data-mode='\(mode.rawValue)'"), "no \(mode.rawValue) bar")
        }
        // Every mode is told apart without colour: a pattern in the legend, a name in each shape's title.
        for pattern in ["connected (solid)", "semi-connected (stripes)", "disconnected (cross-hatch)", "unknown (dots)"] {
            #expect(fleetPage.text.contains(pattern), "the legend lacks \(pattern)")
        }
        let shapes = fleetPage.text.components(separatedBy: "<rect data-mode=").dropFirst()
        #expect(!shapes.isEmpty && shapes.allSatisfy { $0.contains("<title>") })

        let profile = f.directory + "/chromium"
        let common = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=\(profile)"]
        // The ranking's first site has the most to show.
        let ranked = try #require(fleetPage.text.firstMatch(of: /id=budget-ranking.*?href='\/sites\/(store-[0-9]+)\?window=30d'/)?.1)
        let pages = [("/?token=\(OperatorFixture.token)", "dashboard-history.png", "fleet-chart"), ("/sites/\(ranked)?window=30d", "site-history.png", "timeline")]
        // Chromium is heavy on 2 cores: the DOM of both pages, a screenshot of the fleet page (of the
        // site page too for `make screenshot`).
        let saving = ProcessInfo.processInfo.environment["EDGEFLEET_SCREENSHOT_DIR"]
        for (path, name, element) in pages {
            let url = "http://127.0.0.1:\(f.port)\(path)"
            let dom = try await runAsync(URL(fileURLWithPath: browser), common + ["--dump-dom", url])
            #expect(dom.status == 0, "\(dom.stderr.suffix(500))")
            #expect(dom.stdout.contains("id=\"\(element)\""), "Chromium's DOM has no \(element)")
            // As Chromium parsed it: every shape closed where it was meant to (an unquoted attribute
            // before "/>" swallows the slash, and the rest of the picture disappears inside one shape).
            let shapes = dom.stdout.matches(of: /<rect[^>]*>/).count
            let closed = dom.stdout.matches(of: /<rect[^>]*>(<title>[^<]*<\/title>)?<\/rect>/).count
            #expect(shapes > 10 && closed == shapes, "\(closed) of \(shapes) shapes closed in \(name)")
            #expect(dom.stdout.matches(of: /<text[^>]*>[^<]+<\/text>/).count >= 5, "the axis and labels of \(name)")
            if saving == nil && element != "fleet-chart" { continue }
            let screenshot = f.directory + "/" + name
            let shot = try await runAsync(
                URL(fileURLWithPath: browser), common + ["--window-size=1280,1100", "--hide-scrollbars", "--screenshot=\(screenshot)", url])
            #expect(shot.status == 0, "\(shot.stderr.suffix(500))")
            let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 20_000, "\(png.count) bytes")
            if let directory = ProcessInfo.processInfo.environment["EDGEFLEET_SCREENSHOT_DIR"] {
                try png.write(to: URL(fileURLWithPath: directory + "/" + name))
            }
        }
        let site = try await HTTP.get(port: f.port, "/sites/\(ranked)?window=30d", token: OperatorFixture.token)
        #expect(site.status == 200 && site.text.contains("id=history-facts") && site.text.contains("outage"), "\(site.text.suffix(800))")
        #expect(try await HTTP.get(port: f.port, "/sites/\(ranked)?window=never", token: OperatorFixture.token).status == 400)
    }
}
