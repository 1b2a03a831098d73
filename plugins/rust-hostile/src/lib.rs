//! A deliberately hostile plugin for the host's tests: its config picks a misbehaviour
//! (`{"behaviour": "loop", "trigger": "boom"}`); with a trigger it misbehaves only on
//! messages containing that text and accepts the others.

use std::sync::OnceLock;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

struct Setup {
    behaviour: String,
    /// Misbehave only when the message JSON contains this (empty: always).
    trigger: String,
}

static SETUP: OnceLock<Setup> = OnceLock::new();

struct Hostile;

impl Guest for Hostile {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let text = |key: &str| config.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let setup = Setup { behaviour: text("behaviour"), trigger: text("trigger") };
        match setup.behaviour.as_str() {
            "slow-init" => spin(),
            "init-error" => return Err("this plugin refuses every config".into()),
            "init-trap" => panic!("trapping in init"),
            _ => {}
        }
        SETUP.set(setup).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(envelope: Envelope) -> Verdict {
        misbehave(&envelope)
    }

    fn on_deliver(envelope: Envelope, _inbox_of: String) -> Verdict {
        match SETUP.get() {
            Some(setup) if setup.behaviour.starts_with("deliver-") => misbehave(&envelope),
            _ => Verdict::Accept,
        }
    }
}

fn misbehave(envelope: &Envelope) -> Verdict {
    let Some(setup) = SETUP.get() else { return Verdict::Accept };
    if !envelope.message_json.contains(&setup.trigger) {
        return Verdict::Accept;
    }
    match setup.behaviour.trim_start_matches("deliver-") {
        "loop" => spin(),
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1024 * 1024]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => panic!("trapping on purpose"),
        "bad-json" => Verdict::Modify("{this is not json".into()),
        "not-object" => Verdict::Modify("[1, 2, 3]".into()),
        "spoof" => Verdict::Modify(
            serde_json::json!({
                "text": "spoofed",
                "sender": "mallory",
                "recipient": "eve",
                "message_id": "forged",
                "app_id": "evil",
            })
            .to_string(),
        ),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            Verdict::Accept
        }
        "print" => {
            println!("hello from {}", envelope.sender);
            eprintln!("warning from {}", envelope.sender);
            Verdict::Accept
        }
        "hold" => Verdict::Hold("held for review".into()),
        "drop" => Verdict::Drop,
        _ => Verdict::Accept,
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

export!(Hostile);
