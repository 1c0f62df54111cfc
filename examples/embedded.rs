//! Runs a VibeMQ node inside your own program and talks to it with rumqttc:
//! `cargo run --example embedded`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = vibemq::Config::default_config();
    config.server.bind = "127.0.0.1:0".parse()?;
    config.http.enabled = false;
    let node = vibemq::Node::start(config).await?;
    let addr = node.mqtt_addr();
    println!("broker listening on {addr}");

    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("example", "127.0.0.1", addr.port()), 10);
    client.subscribe("greetings/#", QoS::AtLeastOnce).await?;
    client
        .publish("greetings/world", QoS::AtLeastOnce, false, "hello")
        .await?;
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
                return Ok::<_, rumqttc::ConnectionError>(p);
            }
        }
    })
    .await??;
    println!("received {:?} on {}", received.payload, received.topic);
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
