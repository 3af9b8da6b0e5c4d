//! rumqttc clients ([`V4Client`] for MQTT 3.1.1, [`V5Client`] for MQTT 5) whose event
//! loop runs in a task that forwards events to a channel.

use std::time::Duration;

use super::*;

/// rumqttc MQTT 3.1.1 client with its event loop in a task.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    pub connack: rumqttc::ConnAck,
}

impl V4Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V4Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::MqttOptions) -> V4Client {
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(T, events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))))) => break c,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("v4 connect failed: {e}"),
                Ok(None) => panic!("v4 event loop ended before CONNACK"),
                Err(_) => panic!("no CONNACK within {T:?}"),
            }
        };
        V4Client {
            client,
            task,
            events,
            connack,
        }
    }

    /// Next incoming packet matching `f`, within `timeout`.
    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&rumqttc::Packet) -> Option<R>,
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(p)))) => {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Wait `d` and assert no PUBLISH arrived (the one legitimate sleep).
    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error: {e}"),
                Ok(None) => panic!("event loop ended"),
                Err(_) => return,
            }
        }
    }
}

/// rumqttc MQTT 5 client with its event loop in a task.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

pub use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

impl V5Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V5Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::v5::MqttOptions) -> V5Client {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(T, events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(c))))) => break c,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("v5 connect failed: {e}"),
                Ok(None) => panic!("v5 event loop ended before CONNACK"),
                Err(_) => panic!("no CONNACK within {T:?}"),
            }
        };
        V5Client {
            client,
            task,
            events,
            connack,
        }
    }

    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&V5Packet) -> Option<R>,
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(p)))) => {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            V5Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            V5Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error: {e}"),
                Ok(None) => panic!("event loop ended"),
                Err(_) => return,
            }
        }
    }
}
