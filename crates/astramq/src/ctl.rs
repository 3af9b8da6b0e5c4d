//! `astramq ctl`: API keys (`key add`, `key rm`, on the key file itself) and the admin
//! API of a node from a terminal (`nodes`, `clients list`, `client show|kick`,
//! `retained list|rm`, `publish`): a table by default, the API's JSON with `--json`.
//!
//! Which node: `--url` (default `http://127.0.0.1:9100`, env `ASTRAMQ_ADMIN_URL`;
//! `https://` for a node with `admin_tls`, verified against `--cacert`);
//! `--node ID` asks that node first for the cluster's nodes and then talks to node
//! ID's admin address. The key: `--key` or `ASTRAMQ_API_KEY`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;

use admin::client::encode;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// `astramq ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's admin listener (its `health_listen`).
    #[arg(
        long,
        env = "ASTRAMQ_ADMIN_URL",
        default_value = "http://127.0.0.1:9100",
        global = true
    )]
    url: String,
    /// API key (`NAME.SECRET`, from `astramq ctl key add`).
    #[arg(long, env = "ASTRAMQ_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// Talk to this node (by node id) instead: its admin address comes from `--url`'s
    /// node list.
    #[arg(long, global = true)]
    node: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// With an `https://` URL: the PEM bundle of the CA that signed the nodes' admin
    /// certificates (required: no system store is used).
    #[arg(long, env = "ASTRAMQ_ADMIN_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// With `https://`: a client certificate (PEM chain) for nodes whose admin
    /// listener requires one (`require_certificate`).
    #[arg(long, env = "ASTRAMQ_ADMIN_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert`.
    #[arg(long, env = "ASTRAMQ_ADMIN_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// API keys in a key file (`admin_keys_file`).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The cluster's nodes.
    Nodes,
    /// Sessions on a node.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// One client.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Retained messages.
    Retained {
        #[command(subcommand)]
        command: RetainedCommand,
    },
    /// Who would receive a message on a topic: every matching subscription, on
    /// every node.
    Subscriptions {
        /// Topic name (no wildcards).
        topic: String,
    },
    /// Where the node's route table forwards a message on a topic (other nodes).
    Routes {
        /// Topic name (no wildcards).
        topic: String,
    },
    /// The node's configuration, secrets redacted (JSON).
    Config,
    /// Take the node out of service: clients asked to move over SECS seconds, new
    /// ones refused, no longer advertised to balancers (it keeps running).
    Drain {
        /// Seconds over which connected clients are asked to move.
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Put a drained node back in service.
    Undrain,
    /// Publish a message.
    Publish {
        /// Topic name.
        topic: String,
        /// Payload (UTF-8 text).
        payload: String,
        /// QoS 0, 1 or 2.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Retain it.
        #[arg(long)]
        retain: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Adds a key and prints it (once: only its hash is stored).
    Add {
        /// Its name (letters, digits, - and _).
        name: String,
        /// `read` (every GET) or `admin` (everything).
        #[arg(long, default_value = "read")]
        scope: String,
        /// The key file (created if missing).
        #[arg(long, env = "ASTRAMQ_ADMIN_KEYS_FILE")]
        file: PathBuf,
    },
    /// Removes a key.
    Rm {
        /// Its name.
        name: String,
        /// The key file.
        #[arg(long, env = "ASTRAMQ_ADMIN_KEYS_FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Disconnects every client whose id starts with a prefix, on every node.
    Kick {
        /// Client id prefix (not empty).
        #[arg(long)]
        prefix: String,
    },
    /// Lists sessions, a page at a time.
    List {
        /// Client ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Connected as this user.
        #[arg(long)]
        user: Option<String>,
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this client id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// One client's connection, subscriptions and queue.
    Show {
        /// Client id.
        id: String,
    },
    /// Disconnects a client (MQTT 5: DISCONNECT 0x98).
    Kick {
        /// Client id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum RetainedCommand {
    /// Lists retained messages matching a filter.
    List {
        /// Topic filter.
        #[arg(long, default_value = "#")]
        filter: String,
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Clears a topic's retained message, cluster-wide.
    Rm {
        /// Topic name.
        topic: String,
    },
}

/// Runs `astramq ctl …`.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    if let CtlCommand::Key { command } = &args.command {
        return key(command);
    }
    let (addr, host, https) = resolve(&args.url)?;
    let tls = if https {
        let ca = args.cacert.as_deref().ok_or_else(|| {
            anyhow!(
                "--url {}: HTTPS needs --cacert (the CA of the nodes' admin certificates)",
                args.url
            )
        })?;
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((("--tls-cert", c.as_path()), ("--tls-key", k.as_path()))),
            _ => None,
        };
        Some(tls::client::client_config("--cacert", ca, identity)?)
    } else {
        None
    };
    let mut api = Api {
        addr,
        host,
        key: args.key.clone(),
        tls,
    };
    if let Some(node) = &args.node {
        api.addr = node_admin(&api, node)?;
        api.host = api.addr.ip().to_string();
    }
    let out = match &args.command {
        CtlCommand::Key { .. } => unreachable!("handled above"),
        CtlCommand::Nodes => api.get("/api/v1/nodes")?,
        CtlCommand::Clients {
            command:
                ClientsCommand::List {
                    prefix,
                    user,
                    limit,
                    after,
                },
        } => {
            let mut q = Vec::new();
            push(&mut q, "prefix", prefix.as_deref());
            push(&mut q, "user", user.as_deref());
            push(&mut q, "limit", limit.map(|l| l.to_string()).as_deref());
            push(&mut q, "after", after.as_deref());
            api.get(&format!("/api/v1/clients{}", query(&q)))?
        }
        CtlCommand::Clients {
            command: ClientsCommand::Kick { prefix },
        } => api.send(
            "POST",
            &format!("/api/v1/kick?prefix={}", encode(prefix)),
            None,
        )?,
        CtlCommand::Client {
            command: ClientCommand::Show { id },
        } => api.get(&format!("/api/v1/clients/{}", encode(id)))?,
        CtlCommand::Client {
            command: ClientCommand::Kick { id },
        } => api.send(
            "POST",
            &format!("/api/v1/clients/{}/kick", encode(id)),
            None,
        )?,
        CtlCommand::Retained {
            command: RetainedCommand::List { filter, limit },
        } => {
            let mut q = Vec::new();
            push(&mut q, "filter", Some(filter));
            push(&mut q, "limit", limit.map(|l| l.to_string()).as_deref());
            api.get(&format!("/api/v1/retained{}", query(&q)))?
        }
        CtlCommand::Retained {
            command: RetainedCommand::Rm { topic },
        } => api.send(
            "DELETE",
            &format!("/api/v1/retained?topic={}", encode(topic)),
            None,
        )?,
        CtlCommand::Subscriptions { topic } => {
            api.get(&format!("/api/v1/subscriptions?topic={}", encode(topic)))?
        }
        CtlCommand::Routes { topic } => {
            api.get(&format!("/api/v1/routes?topic={}", encode(topic)))?
        }
        CtlCommand::Config => api.get("/api/v1/config")?,
        CtlCommand::Drain { secs } => {
            api.send("POST", &format!("/api/v1/drain?secs={secs}"), None)?
        }
        CtlCommand::Undrain => api.send("DELETE", "/api/v1/drain", None)?,
        CtlCommand::Publish {
            topic,
            payload,
            qos,
            retain,
        } => {
            let body = json!({"topic": topic, "payload": payload, "qos": qos, "retain": retain});
            api.send("POST", "/api/v1/publish", Some(&body))?
        }
    };
    let mut stdout = std::io::stdout();
    if args.json {
        writeln!(stdout, "{out}")?;
    } else {
        stdout.write_all(render(&args.command, &out).as_bytes())?;
    }
    Ok(())
}

fn key(command: &KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Add { name, scope, file } => {
            let scope = admin::keys::Scope::parse(scope)
                .ok_or_else(|| anyhow!("--scope {scope:?}: read or admin"))?;
            let key = admin::keys::add_key(file, name, scope)?;
            // The key alone on standard output, so that scripts can capture it.
            println!("{key}");
            eprintln!(
                "added {} key {name:?} to {} (only its hash is stored: keep the key now)",
                scope.name(),
                file.display()
            );
        }
        KeyCommand::Rm { name, file } => {
            if !admin::keys::remove_key(file, name)? {
                bail!("no key named {name:?} in {}", file.display());
            }
            eprintln!("removed key {name:?} from {}", file.display());
        }
    }
    Ok(())
}

/// A plain or TLS connection.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One node's admin API.
struct Api {
    addr: SocketAddr,
    /// The name its certificate must carry (the URL's host; an IP for `--node`).
    host: String,
    key: Option<String>,
    /// HTTPS with this configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Api {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None)
    }

    /// One request; the JSON answer, or an error carrying the API's reason.
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (status, text) = http(self, method, path, body)
            .with_context(|| format!("{method} {scheme}://{}{path}", self.addr))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: HTTP {status}, not JSON: {text:?}"))?;
        if !(200..300).contains(&status) {
            let reason = value["reason"].as_str().unwrap_or("");
            let error = value["error"].as_str().unwrap_or("error");
            bail!("{method} {path}: HTTP {status} {error}: {reason}");
        }
        Ok(value)
    }
}

/// Node `id`'s admin address, from the node list of the node at `api`.
fn node_admin(api: &Api, id: &str) -> anyhow::Result<SocketAddr> {
    let nodes = api.get("/api/v1/nodes")?;
    let node = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node_id"] == id)
        .ok_or_else(|| anyhow!("no node {id:?} in the cluster as {} sees it", api.addr))?;
    let admin = node["admin"]
        .as_str()
        .ok_or_else(|| anyhow!("node {id:?} advertises no admin listener"))?;
    admin
        .parse()
        .with_context(|| format!("node {id:?}'s admin address {admin:?}"))
}

/// `http://HOST:PORT` or `https://HOST:PORT` (a bare `HOST:PORT` is HTTP): its
/// address, its host (what the certificate must name) and whether it is HTTPS.
fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String, bool)> {
    let (https, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => bail!("--url {url}: {scheme}:// is not http:// or https://"),
        None => (false, url),
    };
    let hostport = rest.trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("--url {url}"))?
        .next()
        .ok_or_else(|| anyhow!("--url {url}: no address"))?;
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => hostport.to_string(),
    };
    Ok((addr, host, https))
}

fn push(q: &mut Vec<String>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        q.push(format!("{name}={}", encode(v)));
    }
}

fn query(q: &[String]) -> String {
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// A plain HTTP/1.1 exchange (`Connection: close`): the status and the body.
fn http(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let (addr, key) = (api.addr, api.key.as_deref());
    let timeout = Duration::from_secs(15);
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut s: Box<dyn ReadWrite> = match &api.tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(api.host.clone())
                .with_context(|| format!("{:?} as a TLS server name", api.host))?;
            let conn = rustls::ClientConnection::new(config.clone(), name)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        // A TLS peer may close without close_notify after `Connection: close`.
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e.into());
        }
    }
    let (status, body) = admin::client::parse(&raw).map_err(|e| anyhow!(e))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A table: a header row, then rows, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|item| fields.iter().map(|f| cell(&item[*f])).collect())
        .collect()
}

fn render(command: &CtlCommand, out: &Value) -> String {
    match command {
        CtlCommand::Nodes => {
            let f = ["node_id", "self", "status", "clients", "admin", "version"];
            table(&f, &rows(&out["nodes"], &f))
        }
        CtlCommand::Clients {
            command: ClientsCommand::Kick { .. },
        } => {
            let per_node: Vec<String> = out["nodes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(n, k)| format!("{n}: {k}"))
                .collect();
            format!(
                "kicked {} clients ({})\n",
                cell(&out["kicked"]),
                per_node.join(", ")
            )
        }
        CtlCommand::Clients { .. } => {
            let f = [
                "client_id",
                "connected",
                "username",
                "peer",
                "protocol",
                "connected_at",
            ];
            let mut t = table(&f, &rows(&out["clients"], &f));
            if let Some(next) = out["next"].as_str() {
                t.push_str(&format!("more: --after {next}\n"));
            }
            t
        }
        CtlCommand::Client {
            command: ClientCommand::Show { .. },
        } => {
            let mut t = String::new();
            for k in [
                "client_id",
                "node",
                "connected",
                "username",
                "peer",
                "protocol",
                "keep_alive_secs",
                "connected_at",
                "session_expiry_secs",
                "inflight",
                "queued",
            ] {
                if !out[k].is_null() {
                    t.push_str(&format!("{k:<20} {}\n", cell(&out[k])));
                }
            }
            if out["subscriptions"].is_array() {
                t.push('\n');
                t.push_str(&table(
                    &["filter", "qos"],
                    &rows(&out["subscriptions"], &["filter", "qos"]),
                ));
            }
            t
        }
        CtlCommand::Client {
            command: ClientCommand::Kick { .. },
        } => format!(
            "kicked {} on {}\n",
            cell(&out["kicked"]),
            cell(&out["node"])
        ),
        CtlCommand::Retained {
            command: RetainedCommand::List { .. },
        } => {
            let f = ["topic", "qos", "bytes", "payload"];
            table(&f, &rows(&out["retained"], &f))
        }
        CtlCommand::Retained {
            command: RetainedCommand::Rm { .. },
        } => format!(
            "deleted the retained message of {}\n",
            cell(&out["deleted"])
        ),
        CtlCommand::Publish { .. } => format!(
            "published to {} (qos {}, {} local deliveries)\n",
            cell(&out["published"]),
            cell(&out["qos"]),
            cell(&out["local_deliveries"])
        ),
        CtlCommand::Subscriptions { .. } => {
            let f = ["client_id", "node", "filter", "qos", "connected"];
            table(&f, &rows(&out["subscriptions"], &f))
        }
        CtlCommand::Routes { .. } => {
            let f = ["node", "run", "groups"];
            let mut t = table(&f, &rows(&out["remote"], &f));
            if out["remote"].as_array().is_none_or(|r| r.is_empty()) {
                t = format!("no other node subscribes to {}\n", cell(&out["topic"]));
            }
            t
        }
        CtlCommand::Config => format!("{:#}\n", out["config"]),
        CtlCommand::Drain { .. } => format!(
            "{} is draining: {} connected clients asked to move over {} s{}\n",
            cell(&out["node"]),
            cell(&out["clients"]),
            cell(&out["secs"]),
            if out["already"] == true {
                " (it was draining already)"
            } else {
                ""
            }
        ),
        CtlCommand::Undrain => format!(
            "{} accepts connections again{}\n",
            cell(&out["node"]),
            if out["was_draining"] == true {
                ""
            } else {
                " (it was not draining)"
            }
        ),
        CtlCommand::Key { .. } => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_urls_encode() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "a    bb\nxyz  1\nq    22\n");
        let local: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(
            resolve("http://127.0.0.1:9100/").unwrap(),
            (local, "127.0.0.1".to_string(), false)
        );
        assert_eq!(
            resolve("https://127.0.0.1:9100").unwrap(),
            (local, "127.0.0.1".to_string(), true)
        );
        assert!(resolve("ftp://127.0.0.1:9100").is_err());
    }
}
