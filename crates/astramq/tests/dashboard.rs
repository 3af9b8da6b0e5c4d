//! The web dashboard (`/ui/` on the admin listener, docs/admin.md "Dashboard") in a
//! real headless Chromium against a running three-node cluster: each page loads and
//! shows live data from the cluster (nodes, a client connected by the test on
//! another node, its subscriptions, who gets a topic, retained messages), and the
//! page's buttons act: a publish from the form reaches an MQTT subscriber, a
//! retained message is cleared, and a client is kicked (MQTT 5 DISCONNECT 0x98).
//!
//! ```sh
//! cargo test -p astramq --test dashboard
//! ASTRAMQ_SCREENSHOTS=docs/img cargo test -p astramq --test dashboard   # the docs' pictures
//! ```

mod common;

use std::time::Duration;

use common::admin::*;
use common::browser::Browser;
use common::cluster::*;
use common::*;

/// Page loads and API round trips through three nodes on a loaded 2-core machine.
const UI: Duration = Duration::from_secs(15);

/// Saves a screenshot as `docs/img/dashboard-NAME.png`-style files when
/// `ASTRAMQ_SCREENSHOTS` names a directory.
async fn picture(b: &mut Browser, name: &str) {
    if let Ok(dir) = std::env::var("ASTRAMQ_SCREENSHOTS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        b.screenshot(&dir.join(format!("dashboard-{name}.png")))
            .await;
    }
}

/// Opens the dashboard's `route` (`clients`, `client/ID`…) and waits until the page
/// switched to it: its section is shown and its lists were cleared for the new
/// load (rows still in the DOM from an earlier visit would otherwise be found
/// before the `hashchange` arrives).
async fn open(b: &mut Browser, admin: std::net::SocketAddr, route: &str) {
    b.navigate(&format!("http://{admin}/ui/#/{route}")).await;
    let page = route.split('/').next().unwrap();
    b.wait_for(
        &format!("location.hash === '#/{route}' && !document.getElementById('page-{page}').hidden"),
        UI,
    )
    .await;
}

/// JavaScript: sets the input `id` to `value` (a JSON string literal).
fn set(id: &str, value: &str) -> String {
    format!(
        "document.getElementById({}).value = {};",
        serde_json::to_string(id).unwrap(),
        serde_json::to_string(value).unwrap()
    )
}

/// JavaScript: the row of table body `tbody` whose `attr` is `value`, as a
/// selector expression.
fn row(tbody: &str, attr: &str, value: &str) -> String {
    format!(
        "document.querySelector('#{tbody} tr[{attr}=' + {} + ']')",
        serde_json::to_string(&serde_json::to_string(value).unwrap()).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_live_cluster_data_and_its_buttons_act() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let admin = add_key(&file, "ops", "admin").await;
    let c = TestCluster::builder(3)
        .args(&admin_args(&file))
        .start()
        .await;
    // A device on n2, subscribed, with a retained state beside it.
    let mut probe = c.client(1, Version::V5, "dash-probe").await;
    probe.sub("dash/#", 1).await;
    // n3 knows n2's route before it publishes (routes propagate asynchronously).
    c.sync_feed(1, 2).await;
    let mut other = c.client(2, Version::V5, "dash-other").await;
    assert_eq!(other.publish("dash/state", b"on", 1, true).await, 0);
    let _ = probe.recv_publish(T).await;
    let h1 = c.node(0).health_addr();

    let mut b = Browser::launch().await;
    // `/` leads to the dashboard, which asks for a key first.
    b.navigate(&format!("http://{h1}/")).await;
    b.wait_for(
        "location.pathname === '/ui/' && !document.getElementById('login').hidden",
        UI,
    )
    .await;
    picture(&mut b, "login").await;
    // A wrong key is refused and the form comes back with the API's reason.
    b.eval(&format!(
        "{} document.getElementById('login-form').requestSubmit(); true",
        set("login-key", "ops.wrong")
    ))
    .await;
    b.wait_for(
        "!document.getElementById('login').hidden && \
         document.getElementById('status').textContent.includes('refused')",
        UI,
    )
    .await;
    b.eval(&format!(
        "{} document.getElementById('login-form').requestSubmit(); true",
        set("login-key", &admin)
    ))
    .await;

    // Overview: the three nodes, healthy, with the clients the test connected and
    // message counters that move.
    b.wait_for(
        "document.querySelectorAll('#nodes tr').length === 3 && \
         !document.querySelector('#nodes tr.bad')",
        UI,
    )
    .await;
    for id in ["n1", "n2", "n3"] {
        b.wait_for(&row("nodes", "data-node", id), UI).await;
    }
    let clients_cell = |node: &str| {
        format!(
            "Number({}.children[4].textContent)",
            row("nodes", "data-node", node)
        )
    };
    b.wait_for(&format!("{} >= 1", clients_cell("n2")), UI)
        .await;
    let before = b
        .eval(&format!(
            "Number({}.children[7].textContent)",
            row("nodes", "data-node", "n3")
        ))
        .await
        .as_u64()
        .expect("n3's received count");
    for i in 0..20 {
        other
            .publish("dash/tick", format!("{i}").as_bytes(), 1, false)
            .await;
    }
    b.wait_for(
        &format!(
            "Number({}.children[7].textContent) >= {}",
            row("nodes", "data-node", "n3"),
            before + 20
        ),
        UI,
    )
    .await;
    b.wait_for("samples.length >= 3", UI).await;
    picture(&mut b, "overview").await;
    for _ in 0..20 {
        probe.recv_publish(T).await;
    }

    // Clients: the device connected on n2 is listed, found from n1.
    open(&mut b, h1, "clients").await;
    b.wait_for(
        &format!(
            "{r} && {r}.children[1].textContent === 'n2' && \
             {r}.children[2].textContent === 'yes'",
            r = row("clients", "data-client", "dash-probe")
        ),
        UI,
    )
    .await;
    picture(&mut b, "clients").await;

    // One client: its node and subscriptions.
    open(&mut b, h1, "client/dash-probe").await;
    b.wait_for(
        "document.getElementById('client-subs').textContent.includes('dash/#') && \
         document.getElementById('client-fields').textContent.includes('n2')",
        UI,
    )
    .await;
    picture(&mut b, "client").await;

    // Who gets a topic: the device's subscription, on n2.
    open(&mut b, h1, "subscriptions").await;
    b.eval(&format!(
        "{} document.getElementById('subs-form').requestSubmit(); true",
        set("subs-topic", "dash/lamp/1")
    ))
    .await;
    b.wait_for(
        &format!(
            "{r} && {r}.children[1].textContent === 'n2' && \
             {r}.children[2].textContent === 'dash/#'",
            r = row("subs", "data-sub", "dash-probe")
        ),
        UI,
    )
    .await;
    picture(&mut b, "subscriptions").await;

    // Publish from the form: the device receives it.
    open(&mut b, h1, "publish").await;
    b.eval(&format!(
        "{} {} document.getElementById('publish-qos').value = '1'; \
         document.getElementById('publish-form').requestSubmit(); true",
        set("publish-topic", "dash/hello"),
        set("publish-payload", "from the dashboard")
    ))
    .await;
    let got = probe.recv_publish(UI).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("dash/hello", &b"from the dashboard"[..])
    );
    b.wait_for(
        "document.getElementById('publish-result').textContent.includes('dash/hello')",
        UI,
    )
    .await;
    picture(&mut b, "publish").await;

    // Retained: listed, then cleared with two clicks; a new subscriber gets nothing.
    open(&mut b, h1, "retained").await;
    let state = row("retained", "data-topic", "dash/state");
    b.wait_for(
        &format!("{state} && {state}.textContent.includes('on')"),
        UI,
    )
    .await;
    picture(&mut b, "retained").await;
    let delete = format!("{state}.querySelector('button')");
    b.eval(&format!("{delete}.click(); {delete}.click(); true"))
        .await;
    b.wait_for(&format!("!{state}"), UI).await;
    let mut late = c.client(0, Version::V5, "dash-late").await;
    late.sub("dash/state", 1).await;
    late.expect_no_publish(ABSENCE).await;

    // Kick from the clients page (two clicks): MQTT 5 DISCONNECT 0x98.
    open(&mut b, h1, "clients").await;
    let probe_row = row("clients", "data-client", "dash-probe");
    b.wait_for(
        &format!("{probe_row} && {probe_row}.querySelector('button')"),
        UI,
    )
    .await;
    let kick = format!("{probe_row}.querySelector('button')");
    b.eval(&format!("{kick}.click(); true")).await;
    b.wait_for(&format!("{kick}.textContent === 'Confirm kick'"), UI)
        .await;
    b.eval(&format!("{kick}.click(); true")).await;
    probe.expect_disconnect(0x98, UI).await;
    b.wait_for(
        "document.getElementById('status').textContent.includes('kicked dash-probe')",
        UI,
    )
    .await;
}

// The dashboard's files are served without a key (they hold no data) with a policy
// that lets them load nothing from elsewhere; everything they show needs a key.
#[tokio::test]
async fn the_dashboard_files_load_nothing_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let _ = add_key(&file, "ops", "read").await;
    let broker = Broker::builder().args(&admin_args(&file)).start();
    let h = broker.health_addr();
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (status, headers, body) = http_get_full(h, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers.contains(&format!("content-type: {kind}")),
            "{path}: {headers}"
        );
        assert!(
            headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{path}: {headers}"
        );
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names another origin"
        );
    }
    let (status, headers, _) = http_get_full(h, "/").await;
    assert_eq!(status, 303, "{headers}");
    assert!(headers.contains("location: /ui/"), "{headers}");
}
