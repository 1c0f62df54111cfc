//! A subscriber and a publisher against a running broker (default 127.0.0.1:1883):
//! `cargo run --release &` then `cargo run --example pubsub -- 127.0.0.1 1883`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(1883);

    let (sub, mut sub_events) = AsyncClient::new(MqttOptions::new("pubsub-sub", &host, port), 10);
    sub.subscribe("sensors/+/temperature", QoS::AtLeastOnce)
        .await?;
    let (publisher, mut pub_events) =
        AsyncClient::new(MqttOptions::new("pubsub-pub", &host, port), 10);
    tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });

    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(event) = tokio::time::timeout_at(deadline, sub_events.poll()).await {
        match event? {
            Event::Incoming(Packet::SubAck(_)) if !sent => {
                publisher
                    .publish(
                        "sensors/kitchen/temperature",
                        QoS::AtLeastOnce,
                        false,
                        "21.5",
                    )
                    .await?;
                sent = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                println!("{} = {}", p.topic, String::from_utf8_lossy(&p.payload));
                return Ok(());
            }
            _ => {}
        }
    }
    Err("no message within 5 s: is the broker running?".into())
}
