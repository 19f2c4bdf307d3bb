//! A minimal Rust Stratum client (the published example, unchanged), plus a main that uses it against a proxy:
//! `cargo run -p loka-proxy --example stratum_client -- 127.0.0.1 3333 alice.rig1`

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct StratumClient {
    stream: TcpStream,
    next_id: u64,
}

impl StratumClient {
    pub async fn connect(host: &str, port: u16) -> Result<Self, Box<dyn std::error::Error>> {
        let stream = TcpStream::connect((host, port)).await?;
        Ok(Self { stream, next_id: 1 })
    }

    pub async fn subscribe(
        &mut self,
        user_agent: &str,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let request = json!({
            "id": self.next_id,
            "method": "mining.subscribe",
            "params": [user_agent]
        });

        self.send_request(request).await
    }

    pub async fn authorize(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<bool, Box<dyn std::error::Error>> {
        let request = json!({
            "id": self.next_id,
            "method": "mining.authorize",
            "params": [username, password]
        });

        let response = self.send_request(request).await?;
        Ok(response["result"].as_bool().unwrap_or(false))
    }

    async fn send_request(
        &mut self,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let request_str = format!("{}\n", request);
        self.stream.write_all(request_str.as_bytes()).await?;

        let mut buffer = vec![0; 4096];
        let n = self.stream.read(&mut buffer).await?;
        let response_str = String::from_utf8_lossy(&buffer[..n]);

        self.next_id += 1;
        Ok(serde_json::from_str(&response_str)?)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let host = args.get(1).map_or("127.0.0.1", String::as_str);
    let port: u16 = args.get(2).map_or(Ok(3333), |p| p.parse())?;
    let worker = args.get(3).map_or("rust.example", String::as_str);
    let mut client = StratumClient::connect(host, port).await?;
    let subscription = client.subscribe("rust-client/1.0").await?;
    let authorized = client.authorize(worker, "x").await?;
    println!(
        "{}",
        json!({"subscribe": subscription, "authorize": authorized})
    );
    if authorized {
        Ok(())
    } else {
        Err("authorization refused".into())
    }
}
