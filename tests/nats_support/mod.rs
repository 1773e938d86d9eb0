//! What the NATS tests share: reading back what JetStream holds.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

/// One stored message: subject, headers we read, body.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub id: String,
    pub end_lsn: Option<String>,
    pub body: serde_json::Value,
}

/// Every message of `stream`, in order, read through an ephemeral consumer.
pub async fn read_all(url: &str, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers = message.headers.clone().unwrap_or_default();
            let get = |n: &str| headers.get(n).map(|v| v.as_str().to_string());
            out.push(Stored {
                subject: message.subject.to_string(),
                id: get("Nats-Msg-Id").unwrap_or_default(),
                end_lsn: get("Audit-Tail-End-Lsn"),
                body: serde_json::from_slice(&message.payload).unwrap(),
            });
        }
    }
    out
}

/// How many messages `stream` holds.
pub async fn count(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    stream.info().await.unwrap().state.messages
}
