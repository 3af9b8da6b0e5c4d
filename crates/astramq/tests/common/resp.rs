//! A minimal blocking Redis client for the tests: enough to read what the nodes wrote
//! (plain TCP, following Redis Cluster redirections), and the same over TLS through
//! the redis crate for TLS-only servers and sentinels.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::cluster::RedisTlsFiles;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// A status or bulk reply as text (`""` for nil).
    pub fn text(&self) -> String {
        match self {
            Value::Status(s) => s.clone(),
            Value::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Value::Bulk(None) | Value::Array(None) => String::new(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// An array of bulk strings (nil = empty).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Value::Array(Some(items)) => items.iter().map(Value::text).collect(),
            Value::Array(None) => Vec::new(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// An integer reply.
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// A flat `[field, value, field, value...]` array: the value after `field`.
    pub fn field(&self, field: &str) -> Option<&Value> {
        match self {
            Value::Array(Some(items)) => items
                .chunks(2)
                .find(|kv| kv.len() == 2 && kv[0].text() == field)
                .map(|kv| &kv[1]),
            _ => None,
        }
    }
}

/// Runs one command at `addr`, following Redis Cluster redirections.
pub fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<Value> {
    command_with(addr, None, args)
}

/// [`command`], over TLS when `tls` is given (through the redis crate: this
/// client speaks plain TCP only).
pub fn command_with(
    addr: SocketAddr,
    tls: Option<&RedisTlsFiles>,
    args: &[&str],
) -> std::io::Result<Value> {
    let mut addr = addr;
    for _ in 0..5 {
        let reply = match tls {
            None => once(addr, args)?,
            Some(tls) => once_tls(addr, tls, args)?,
        };
        match reply {
            Value::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                let to = e.split_whitespace().nth(2).unwrap_or_default();
                addr = to
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("bad redirection {e:?}")))?;
            }
            other => return Ok(other),
        }
    }
    Err(std::io::Error::other("too many redirections"))
}

fn once_tls(addr: SocketAddr, tls: &RedisTlsFiles, args: &[&str]) -> std::io::Result<Value> {
    let io = |e: redis::RedisError| std::io::Error::other(e.to_string());
    let read = |p: &Path| std::fs::read(p);
    let certs = redis::TlsCertificates {
        client_tls: match &tls.client {
            Some((c, k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c)?,
                client_key: read(k)?,
            }),
            None => None,
        },
        root_cert: Some(read(&tls.ca)?),
    };
    // By name: the test certificates name `localhost`, and a host-name mismatch
    // test's certificate names nothing else (the nodes dial 127.0.0.1).
    let host = match addr.ip().is_loopback() {
        true => "localhost".to_string(),
        false => addr.ip().to_string(),
    };
    let url = format!("rediss://{host}:{}", addr.port());
    let client = redis::Client::build_with_tls(url, certs).map_err(io)?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(io)?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    Ok(convert(cmd.query::<redis::Value>(&mut conn).map_err(io)?))
}

fn convert(v: redis::Value) -> Value {
    match v {
        redis::Value::Nil => Value::Bulk(None),
        redis::Value::Int(n) => Value::Int(n),
        redis::Value::BulkString(b) => Value::Bulk(Some(b)),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            Value::Array(Some(items.into_iter().map(convert).collect()))
        }
        redis::Value::SimpleString(s) => Value::Status(s),
        redis::Value::Okay => Value::Status("OK".into()),
        redis::Value::ServerError(e) => Value::Error(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_string(),
        }),
        other => Value::Error(format!("unsupported reply {other:?}")),
    }
}

fn once(addr: SocketAddr, args: &[&str]) -> std::io::Result<Value> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req)?;
    read_value(&mut BufReader::new(stream))
}

fn read_value(r: &mut impl BufRead) -> std::io::Result<Value> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let num = || -> std::io::Result<i64> {
        rest.parse()
            .map_err(|_| std::io::Error::other(format!("bad RESP line {line:?}")))
    };
    Ok(match kind {
        "+" => Value::Status(rest.to_string()),
        "-" => Value::Error(rest.to_string()),
        ":" => Value::Int(num()?),
        "$" => match num()? {
            n if n < 0 => Value::Bulk(None),
            n => {
                let mut b = vec![0u8; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Value::Bulk(Some(b))
            }
        },
        "*" => match num()? {
            n if n < 0 => Value::Array(None),
            n => Value::Array(Some(
                (0..n).map(|_| read_value(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(std::io::Error::other(format!("bad RESP line {line:?}"))),
    })
}
