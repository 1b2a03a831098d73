//! chat21-http-server's write API served by inboxd, driven by chat21's own clients unchanged:
//! `@chat21/chat21-node-sdk` (what Tiledesk's server calls) creates groups, adds and removes
//! members, sends as `system` and as users, archives; chat21client.js (the web widget's client)
//! and raw MQTT users assert what each member receives.

use anyhow::{Context, Result, ensure};
use inboxd_e2e::daemon::{Process, env_for, free_address, http_get, http_get_with};
use inboxd_e2e::db::TestDb;

use inboxd_e2e::js::JsClient;
use inboxd_e2e::jwt::TokenOptions;
use inboxd_e2e::{ConnectOptions, MqttUser, eventually, shared_node, unique_id};
use serde_json::{Value, json};

use crate::util::{Chat, WAIT, call_json, expect_on, next};

/// A chat with a store and the API on a free address; the database lives as long as the chat.
async fn api_chat(tilechat: bool) -> Result<(Chat, std::net::SocketAddr, TestDb)> {
    let db = TestDb::sqlite()?;
    let address = free_address()?;
    let builder = if tilechat { Chat::builder().tilechat() } else { Chat::builder() };
    let chat = builder.store(&db).api(address).start().await?;
    Ok((chat, address, db))
}

/// A Tiledesk token for `user`: `aud` a list, `tiledesk_api_roles` `role`.
fn tiledesk_token(chat: &Chat, user: &str, role: &str) -> Result<String> {
    let issuer = chat.node.issuer();
    let mut claims = issuer.claims(user, &chat.app)?;
    claims.insert("aud".into(), json!(["rabbitmq", user]));
    claims.insert("tiledesk_api_roles".into(), json!(role));
    issuer.sign(&claims)
}

/// A node SDK client of `chat`'s API with `config` on top of its URL and app.
async fn sdk(chat: &Chat, address: std::net::SocketAddr, config: Value) -> Result<JsClient> {
    sdk_of(&chat.app, address, config).await
}

/// A node SDK client of the API of `app` at `address`, with `config` on top.
async fn sdk_of(app: &str, address: std::net::SocketAddr, config: Value) -> Result<JsClient> {
    let mut client = JsClient::start()?;
    let mut full = json!({"url": format!("http://{address}"), "appid": app});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), config.as_object()) {
        full.extend(extra.clone());
    }
    client.sdk(full).await?;
    Ok(client)
}

/// The next `count` messages of `user` on `topic`, other topics skipped.
async fn messages_on(user: &mut MqttUser, topic: &str, count: usize) -> Result<Vec<Value>> {
    let mut found = Vec::new();
    while found.len() < count {
        let (got, body) = next(user).await?;
        if got == topic {
            found.push(body);
        }
    }
    Ok(found)
}

/// The next messages of `user` on each of `topics` (one each, in any order), other topics refused.
async fn one_on_each(user: &mut MqttUser, topics: &[&str]) -> Result<Vec<Value>> {
    let mut found: Vec<Option<Value>> = vec![None; topics.len()];
    while found.iter().any(Option::is_none) {
        let (got, body) = next(user).await?;
        let slot = topics.iter().position(|t| *t == got).and_then(|i| found.get_mut(i).filter(|f| f.is_none()));
        let slot = slot.with_context(|| format!("{} got {got}: {body}", user.user()))?;
        *slot = Some(body);
    }
    Ok(found.into_iter().flatten().collect())
}

/// An HTTP answer as the SDK resolves it: parsed JSON, or the text when it sent no JSON body
/// (`groups.leave` sends none, so `request` leaves the answer unparsed).
fn parsed(answer: Value) -> Value {
    match answer {
        Value::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        other => other,
    }
}

fn text(message: &Value) -> &str {
    message["text"].as_str().unwrap_or_default()
}

/// chat21's info message from `system`: subtype `info`, the label `key`, delivered.
fn ensure_info(message: &Value, text: &str, key: &str) -> Result<()> {
    ensure!(
        message["text"] == text
            && message["sender"] == "system"
            && message["status"] == 150
            && message["attributes"]["subtype"] == "info"
            && message["attributes"]["messagelabel"]["key"] == key,
        "expected the info {key:?} {text:?}, got {message}"
    );
    ensure!(message.get("group").is_none(), "inline members echoed: {message}");
    Ok(())
}

/// Tiledesk's way: its admin token creates a support group with the SDK; every member gets the
/// GROUP_CREATED and "joined group on creation" info messages (the chat21client.js member too);
/// a join sends the group update to the members, the MEMBER_JOINED info, and gives the new member
/// the group's history marked `__history`; `system` posts into the group it is no member of; a
/// leave tells the old members and not the one who left; rename and attributes reach the members.
#[tokio::test]
async fn node_sdk_manages_a_group_and_each_member_sees_it() -> Result<()> {
    let (chat, address, _db) = api_chat(true).await?;
    let app = chat.app.clone();
    let (alice_id, bob_id, carol_id) = (unique_id("alice"), unique_id("bob"), unique_id("carol"));
    let admin_id = unique_id("admin");
    let gid = unique_id("support-group");
    let mut alice = chat.user(&alice_id).await?;
    let mut carol = chat.user(&carol_id).await?;
    let mut bob = JsClient::start()?;
    let bob_jwt = chat.node.issuer().mint(&bob_id, &app, &TokenOptions::default())?;
    let ws = format!("ws://127.0.0.1:{}/ws", chat.node.ws_port());
    bob.connect(&ws, &format!("http://{address}/api"), &app, &bob_id, &bob_jwt).await?;
    let admin = tiledesk_token(&chat, &admin_id, "admin")?;
    let mut tiledesk = sdk(&chat, address, json!({"admintoken": admin})).await?;

    let created =
        tiledesk.sdk_call("groups.create", json!(["Support", [alice_id, bob_id], {"dept": "d1"}, gid])).await?;
    let group = &created["group"];
    ensure!(created["success"] == true, "{created}");
    ensure!(
        group["uid"] == gid.as_str()
            && group["name"] == "Support"
            && group["owner"] == admin_id.as_str()
            && group["members"] == json!({alice_id.clone(): 1, bob_id.clone(): 1})
            && group["attributes"] == json!({"dept": "d1"}),
        "{created}"
    );
    let alice_group = chat.topic(&format!("users/{alice_id}/messages/{gid}/clientadded"));
    let created_texts = [
        "Group created".to_owned(),
        format!("{alice_id} joined group on creation"),
        format!("{bob_id} joined group on creation"),
    ];
    let keys = ["GROUP_CREATED", "MEMBER_JOINED_GROUP", "MEMBER_JOINED_GROUP"];
    for (message, (text, key)) in
        messages_on(&mut alice, &alice_group, 3).await?.iter().zip(created_texts.iter().zip(keys))
    {
        ensure_info(message, text, key)?;
    }
    for text in &created_texts {
        let event = bob.event(text, |e| e.name == "onMessageAdded" && e.args[0]["text"] == text.as_str()).await?;
        ensure!(event.args[0]["recipient"] == gid.as_str(), "{:?}", event.args);
    }

    alice.publish_json(&alice.outgoing_topic(&gid), &json!({"text": "hello group", "channel_type": "group"})).await?;
    ensure!(text(&expect_on(&mut alice, &alice_group).await?) == "hello group");
    bob.event("hello group", |e| e.name == "onMessageAdded" && e.args[0]["text"] == "hello group").await?;

    // A join: the members are told, and the new member gets the history.
    let joined = tiledesk.sdk_call("groups.join", json!([carol_id, gid])).await?;
    ensure!(joined == json!({"success": true}), "{joined}");
    let alice_update = chat.topic(&format!("users/{alice_id}/groups/{gid}/clientupdated"));
    let [update, info] = <[Value; 2]>::try_from(one_on_each(&mut alice, &[&alice_update, &alice_group]).await?)
        .map_err(|v| anyhow::anyhow!("{v:?}"))?;
    ensure!(
        update["members"].get(&carol_id).is_some()
            && update["notification"]["messagelabel"]["key"] == "MEMBER_JOINED_GROUP",
        "{update}"
    );
    let added = format!("{carol_id} added to group");
    ensure_info(&info, &added, "MEMBER_JOINED_GROUP")?;
    let bob_update = bob.event("carol's join", |e| e.name == "onGroupUpdated").await?;
    ensure!(bob_update.args[0]["members"].get(&carol_id).is_some(), "{:?}", bob_update.args);

    let carol_group = chat.topic(&format!("users/{carol_id}/messages/{gid}/clientadded"));
    let carol_update = chat.topic(&format!("users/{carol_id}/groups/{gid}/clientupdated"));
    let (mut history, mut info, mut updates) = (Vec::new(), Vec::new(), 0);
    while history.len() < 4 || info.is_empty() || updates == 0 {
        let (topic, body) = next(&mut carol).await?;
        match topic {
            t if t == carol_update => updates += 1,
            t if t == carol_group && body["__history"] == "true" => history.push(body),
            t if t == carol_group => info.push(body),
            other => anyhow::bail!("carol got {other}: {body}"),
        }
    }
    let history_texts: Vec<_> = history.iter().map(text).collect();
    let mut expected: Vec<&str> = created_texts.iter().map(String::as_str).collect();
    expected.push("hello group");
    ensure!(history_texts == expected, "history {history_texts:?}");
    ensure!(history.iter().all(|m| m["status"] == 150 && m["attributes"]["sendnotification"] == false), "{history:?}");
    ensure_info(&info[0], &added, "MEMBER_JOINED_GROUP")?;
    // The copy is in carol's stored history too.
    let carol_jwt = chat.node.issuer().mint(&carol_id, &app, &TokenOptions::default())?;
    let path = format!("/api/{app}/{carol_id}/conversations/{gid}/messages");
    eventually(WAIT, "carol's stored history of the group", || async {
        let (status, body) = http_get_with(address, &path, &[("Authorization", &carol_jwt)]).await?;
        let body: Value = serde_json::from_str(&body).with_context(|| format!("{status}: {body}"))?;
        let stored = body["result"].as_array().map_or(0, Vec::len);
        ensure!(status == 200 && stored == 5, "{status}: {stored} messages: {body}");
        Ok(())
    })
    .await?;

    // `system` (Tiledesk's info and bot messages) posts into a group it is no member of.
    let sent = tiledesk
        .sdk_call("messages.sendToGroup", json!(["Bot", gid, "Support", "how can I help?", "system", {"x": 1}]))
        .await?;
    ensure!(sent == json!({"success": true}), "{sent}");
    for (user, topic) in [(&mut alice, &alice_group), (&mut carol, &carol_group)] {
        let message = expect_on(user, topic).await?;
        ensure!(text(&message) == "how can I help?" && message["sender"] == "system", "{message}");
    }
    bob.event("system's message", |e| e.name == "onMessageAdded" && e.args[0]["text"] == "how can I help?").await?;

    // A leave: the old members are told (bob too), the members left get the info.
    let left = parsed(tiledesk.sdk_call("groups.leave", json!([bob_id, gid])).await?);
    ensure!(left == json!({"success": true}), "{left}");
    let [update, info] = <[Value; 2]>::try_from(one_on_each(&mut alice, &[&alice_update, &alice_group]).await?)
        .map_err(|v| anyhow::anyhow!("{v:?}"))?;
    ensure!(
        update["members"] == json!({alice_id.clone(): 1, carol_id.clone(): 1})
            && update["notification"]["messagelabel"]
                == json!({"key": "MEMBER_LEFT_GROUP", "parameters": {"member_id": bob_id}}),
        "{update}"
    );
    let removed = format!("{bob_id} removed from group");
    ensure_info(&info, &removed, "MEMBER_LEFT_GROUP")?;
    let bob_update = bob.event("bob's leave", |e| e.name == "onGroupUpdated").await?;
    ensure!(bob_update.args[0]["members"].get(&bob_id).is_none(), "{:?}", bob_update.args);

    // Rename and attributes go to the members.
    let renamed = tiledesk.sdk_call("groups.update", json!(["Support 2", admin_id, null, gid])).await?;
    ensure!(renamed == json!({"success": true}), "{renamed}");
    let update = expect_on(&mut alice, &alice_update).await?;
    ensure!(
        update["name"] == "Support 2" && update["notification"]["messagelabel"]["key"] == "DATA_UPDATED_GROUP",
        "{update}"
    );
    let changed = tiledesk.sdk_call("groups.updateAttributes", json!([{"priority": "high"}, gid])).await?;
    ensure!(changed == json!({"success": true}), "{changed}");
    let update = expect_on(&mut alice, &alice_update).await?;
    ensure!(
        update["attributes"] == json!({"priority": "high"})
            && update["notification"]["messagelabel"]["key"] == "ATTRIBUTES_UPDATED_GROUP",
        "{update}"
    );
    ensure!(bob.pending("onMessageAdded").iter().all(|e| e.args[0]["text"] != removed.as_str()), "bob was told");
    let stored = http_get_with(address, &format!("/api/{app}/groups/{gid}"), &[("Authorization", &admin)]).await?;
    let stored: Value = serde_json::from_str(&stored.1)?;
    ensure!(
        stored["result"]["name"] == "Support 2"
            && stored["result"]["members"] == json!({alice_id.clone(): 1, carol_id.clone(): 1}),
        "{stored}"
    );
    Ok(())
}

/// A user's own group through chat21client.js (it is the owner and a member), set members
/// (the new member welcomed, the removed one not), only the owner or an admin changing it (a
/// member removes no one but itself).
#[tokio::test]
async fn chat21client_creates_and_manages_its_own_group() -> Result<()> {
    let (chat, address, _db) = api_chat(true).await?;
    let app = chat.app.clone();
    let (bob_id, dave_id, erin_id) = (unique_id("bob"), unique_id("dave"), unique_id("erin"));
    let gid = unique_id("group");
    let mut dave = chat.user(&dave_id).await?;
    let mut erin = chat.user(&erin_id).await?;
    let mut bob = JsClient::start()?;
    let bob_jwt = chat.node.issuer().mint(&bob_id, &app, &TokenOptions::default())?;
    let ws = format!("ws://127.0.0.1:{}/ws", chat.node.ws_port());
    bob.connect(&ws, &format!("http://{address}/api"), &app, &bob_id, &bob_jwt).await?;

    let created = bob.call("groupCreate", json!(["Friends", gid, {dave_id.clone(): 1}])).await?;
    ensure!(created[0] == Value::Null, "{created:?}");
    let group = &created[1]["group"];
    ensure!(
        group["owner"] == bob_id.as_str() && group["members"] == json!({dave_id.clone(): 1, bob_id.clone(): 1}),
        "{created:?}"
    );
    let dave_group = chat.topic(&format!("users/{dave_id}/messages/{gid}/clientadded"));
    let infos = messages_on(&mut dave, &dave_group, 3).await?;
    ensure!(
        infos.iter().map(text).collect::<Vec<_>>().contains(&format!("{bob_id} joined group on creation").as_str())
    );

    // Someone else's group cannot be changed, nor taken over by creating it again.
    let mut mallory = sdk(
        &chat,
        address,
        json!({"oauth": true, "token": chat.node.issuer().mint(&dave_id, &app, &TokenOptions::default())?}),
    )
    .await?;
    let refused = mallory.sdk_call("groups.setMembers", json!([[dave_id, erin_id], gid])).await?;
    ensure!(refused["success"] == false, "{refused}");
    let taken = mallory.sdk_call("groups.create", json!(["Mine", [dave_id], null, gid])).await?;
    ensure!(taken["success"] == false, "{taken}");
    let removed = parsed(mallory.sdk_call("groups.leave", json!([bob_id, gid])).await?);
    ensure!(removed["success"] == false, "a member removed the owner: {removed}");

    // The owner sets the members: erin in (welcomed with the history), dave out.
    let set = bob.call("groupSetMembers", json!([gid, {bob_id.clone(): 1, erin_id.clone(): 1}])).await?;
    ensure!(set[0] == Value::Null && set[1] == json!({"success": true}), "{set:?}");
    let dave_update = expect_on(&mut dave, &chat.topic(&format!("users/{dave_id}/groups/{gid}/clientupdated"))).await?;
    ensure!(dave_update["members"] == json!({bob_id.clone(): 1, erin_id.clone(): 1}), "{dave_update}");
    let erin_group = chat.topic(&format!("users/{erin_id}/messages/{gid}/clientadded"));
    let (mut history, mut welcome) = (0, None);
    while history < 3 || welcome.is_none() {
        let (topic, body) = next(&mut erin).await?;
        ensure!(topic == erin_group, "erin got {topic}: {body}");
        if body["__history"] == "true" {
            history += 1;
        } else {
            welcome = Some(body);
        }
    }
    let welcome = welcome.context("no welcome")?;
    ensure_info(&welcome, &format!("{erin_id} added to group"), "MEMBER_JOINED_GROUP")?;

    // Dave is out: his post is refused (FAILED copy), erin's reaches bob.
    dave.publish_json(&dave.outgoing_topic(&gid), &json!({"text": "still here?", "channel_type": "group"})).await?;
    let refused = expect_on(&mut dave, &dave_group).await?;
    ensure!(refused["status"] == -100, "{refused}");
    erin.publish_json(&erin.outgoing_topic(&gid), &json!({"text": "hi bob", "channel_type": "group"})).await?;
    ensure!(text(&expect_on(&mut erin, &erin_group).await?) == "hi bob");
    bob.event("erin's post", |e| e.name == "onMessageAdded" && e.args[0]["text"] == "hi bob").await?;

    // The owner leaves its own group through chat21client.js.
    let left = bob.call("groupLeave", json!([gid, bob_id])).await?;
    ensure!(left[1] == json!({"success": true}), "{left:?}");
    let erin_update = chat.topic(&format!("users/{erin_id}/groups/{gid}/clientupdated"));
    let [update, info] = <[Value; 2]>::try_from(one_on_each(&mut erin, &[&erin_update, &erin_group]).await?)
        .map_err(|v| anyhow::anyhow!("{v:?}"))?;
    ensure!(
        update["members"] == json!({erin_id.clone(): 1})
            && update["notification"]["messagelabel"]["key"] == "MEMBER_LEFT_GROUP",
        "{update}"
    );
    ensure_info(&info, &format!("{bob_id} removed from group"), "MEMBER_LEFT_GROUP")?;

    // An app instance for push is stored (and answered as chat21 does).
    let saved = bob.call("saveInstance", json!(["device-1", {"platform": "ionic", "language": "en"}])).await?;
    ensure!(saved[1] == json!({"success": true}), "{saved:?}");
    Ok(())
}

/// `POST /messages` as chat21-http-server takes it: a user sends as itself whatever `sender_id`
/// says, the admin as anyone; chat21's 405 for a missing field; `/messages/sync` answers with the
/// message; archiving publishes the stored conversation (and nothing without one).
#[tokio::test]
async fn messages_and_archives_through_the_api() -> Result<()> {
    let (chat, address, _db) = api_chat(false).await?;
    let app = chat.app.clone();
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let alice_jwt = chat.node.issuer().mint("alice", &app, &TokenOptions::default())?;
    let mut as_alice = sdk(&chat, address, json!({"oauth": true, "token": alice_jwt})).await?;
    let admin = tiledesk_token(&chat, "100-APIADMIN", "admin")?;
    let mut as_admin = sdk(&chat, address, json!({"admintoken": admin})).await?;
    let bob_inbox = chat.topic("users/bob/messages/alice/clientadded");

    let sent = as_alice
        .sdk_call("messages.send", json!(["Alice", "bob", "Bob", "hi bob", "mallory", {"a": 1}, "text"]))
        .await?;
    ensure!(sent == json!({"success": true}), "{sent}");
    let got = expect_on(&mut bob, &bob_inbox).await?;
    ensure!(
        got["sender"] == "alice"
            && got["text"] == "hi bob"
            && got["status"] == 150
            && got["attributes"] == json!({"a": 1}),
        "{got}"
    );
    ensure!(got["sender_fullname"] == "Alice" && got["recipient_fullname"] == "Bob" && got["channel_type"] == "direct");
    let own = expect_on(&mut alice, &chat.topic("users/alice/messages/bob/clientadded")).await?;
    ensure!(own["status"] == 100 && own["message_id"] == got["message_id"], "{own}");

    let sent = as_admin.sdk_call("messages.send", json!(["Alice", "bob", "Bob", "from the server", "alice"])).await?;
    ensure!(sent == json!({"success": true}), "{sent}");
    ensure!(expect_on(&mut bob, &bob_inbox).await?["text"] == "from the server");

    let missing = as_admin.sdk_call("messages.send", json!(["Alice", "bob", null, "no name"])).await?;
    ensure!(missing == json!("Recipient Fullname is mandatory"), "{missing}");

    // Archive: bob's stored conversation with alice, as the list holds it.
    let bob_sdk_token = chat.node.issuer().mint("bob", &app, &TokenOptions::default())?;
    let mut as_bob = sdk(&chat, address, json!({"oauth": true, "token": bob_sdk_token})).await?;
    let archived = as_bob.sdk_call("conversations.archive", json!(["alice"])).await?;
    ensure!(archived == json!({"success": true}), "{archived}");
    let deleted = expect_on(&mut bob, &chat.topic("users/bob/conversations/alice/clientdeleted")).await?;
    ensure!(
        deleted["text"] == "from the server"
            && deleted["sender"] == "alice"
            && deleted["conversWith"] == "alice"
            && deleted["archived"] == true
            && deleted["is_new"] == true,
        "{deleted}"
    );
    let added = expect_on(&mut bob, &chat.topic("users/bob/archived_conversations/alice/clientadded")).await?;
    ensure!(added == deleted, "{added}");
    // No conversation, nothing published: the next thing bob gets is the next message.
    ensure!(as_bob.sdk_call("conversations.archive", json!(["nobody"])).await? == json!({"success": true}));
    let synced = as_admin.sdk_call("messages.send", json!(["Alice", "bob", "Bob", "after", "alice"])).await?;
    ensure!(synced == json!({"success": true}));
    ensure!(expect_on(&mut bob, &bob_inbox).await?["text"] == "after");

    // `/messages/sync` answers with the first message that reaches the caller's inbox: its copy.
    let message =
        json!({"sender_fullname": "Alice", "recipient_id": "bob", "recipient_fullname": "Bob", "text": "sync"});
    let (status, answer) =
        call_json(address, "POST", &format!("/api/{app}/messages/sync"), &alice_jwt, &message).await?;
    ensure!(status == 200 && answer["success"] == true, "{status}: {answer}");
    ensure!(answer["message"]["text"] == "sync" && answer["message"]["status"] == 100, "{answer}");
    ensure!(expect_on(&mut bob, &bob_inbox).await?["text"] == "sync");

    // Deleting a conversation's messages everywhere: not for a user, for the admin.
    let timelines = format!("/api/{app}/alice/messages/timelines");
    let (status, _) = call_json(address, "DELETE", &timelines, &alice_jwt, &json!({})).await?;
    ensure!(status == 401, "a user deleted timelines: {status}");
    let bob_history = format!("/api/{app}/bob/conversations/alice/messages");
    eventually(WAIT, "bob's history with alice stored", || async {
        let (status, answer) = call_json(address, "GET", &bob_history, &admin, &Value::Null).await?;
        ensure!(status == 200 && answer["result"].as_array().map_or(0, Vec::len) == 4, "{status}: {answer}");
        Ok(())
    })
    .await?;
    let (status, answer) = call_json(address, "DELETE", &timelines, &admin, &json!({})).await?;
    ensure!(status == 200 && answer == json!({"success": true}), "{status}: {answer}");
    let (_, answer) = call_json(address, "GET", &bob_history, &admin, &Value::Null).await?;
    ensure!(answer["result"] == json!([]), "{answer}");
    Ok(())
}

/// Members of one group post once each; returns when every user of `users` has every post (the
/// posts arrive on `apps/<app>/users/<u>/messages/<group>/clientadded`, anything else is skipped).
async fn everyone_gets(app: &str, group: &str, users: &mut [MqttUser], round: &str) -> Result<()> {
    for user in users.iter() {
        let post = json!({"text": format!("{round} from {}", user.user()), "channel_type": "group"});
        user.publish_json(&user.outgoing_topic(group), &post).await?;
    }
    let wanted: std::collections::BTreeSet<String> =
        users.iter().map(|u| format!("{round} from {}", u.user())).collect();
    for user in users.iter_mut() {
        let topic = format!("apps/{app}/users/{}/messages/{group}/clientadded", user.user());
        let mut seen = std::collections::BTreeSet::new();
        while seen != wanted {
            let (got, body) = next(user).await.with_context(|| format!("{round}: seen {seen:?}"))?;
            ensure!(body["status"] != -100, "{} refused: {body}", user.user());
            if got == topic && wanted.contains(text(&body)) {
                seen.insert(text(&body).to_owned());
            }
        }
    }
    Ok(())
}

/// Scaled out: two inboxd processes share the shards and the store; the group created and
/// changed through one's API routes on both right after each change (each process hears the
/// `groups.update`; the store refresh is the fallback): a member who just joined posts and is
/// posted to through either, one who left is refused.
#[tokio::test]
async fn a_group_changed_through_one_process_routes_on_every_process() -> Result<()> {
    const SHARDS: &str = "4";
    let node = shared_node().await?;
    let app = unique_id("app");
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("shared.db").display());
    let (api, other) = (free_address()?, free_address()?);
    let mut processes = Vec::new();
    for address in [api, other] {
        let mut env = env_for(node, &app);
        for (key, value) in [
            ("INBOXD_STORE_URL", store.as_str()),
            ("INBOXD_SHARDS_COUNT", SHARDS),
            ("INBOXD_SHARDS_REBALANCE_MS", "300"),
            ("INBOXD_AUTH_SECRET", node.jwt_secret()),
        ] {
            env.insert(key.to_owned(), value.to_owned());
        }
        env.insert("INBOXD_HTTP_ADDRESS".to_owned(), address.to_string());
        processes.push(Process::spawn(node, &format!("inboxd.{app}.shard.0"), &env).await?);
    }
    // Both own shards before anything is sent.
    eventually(WAIT * 3, "the shards spread over both processes", || async {
        for address in [api, other] {
            let (_, metrics) = http_get(address, "/metrics").await?;
            let owned = metrics.lines().find_map(|l| l.strip_prefix("inboxd_shards_owned "));
            ensure!(owned.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) >= 1.0, "{address} owns none");
        }
        Ok(())
    })
    .await?;
    let ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let mut users = Vec::new();
    for id in ids.iter().chain([&"late".to_owned()]) {
        let user = MqttUser::connect(node, id, &app, ConnectOptions::default()).await?;
        user.subscribe_inbox().await?;
        users.push(user);
    }
    let group = "group-scaled";
    let admin = {
        let issuer = node.issuer();
        let mut claims = issuer.claims("admin", &app)?;
        claims.insert("tiledesk_api_roles".into(), json!("admin"));
        issuer.sign(&claims)?
    };
    let mut tiledesk = sdk_of(&app, api, json!({"admintoken": admin})).await?;
    let created = tiledesk.sdk_call("groups.create", json!(["Scaled", ids, null, group])).await?;
    ensure!(created["success"] == true, "{created}");
    let (mut members, mut late) = (users, Vec::new());
    late.push(members.pop().context("the late user")?);
    everyone_gets(&app, group, &mut members, "first").await?;

    // A member joins and posts at once; every member, old and new, gets every post.
    ensure!(tiledesk.sdk_call("groups.join", json!(["late", group])).await? == json!({"success": true}));
    members.append(&mut late);
    everyone_gets(&app, group, &mut members, "after the join").await?;

    // A member leaves: refused at once, on whichever process routes it.
    let left = parsed(tiledesk.sdk_call("groups.leave", json!(["m0", group])).await?);
    ensure!(left == json!({"success": true}), "{left}");
    let mut gone = members.remove(0);
    everyone_gets(&app, group, &mut members, "after the leave").await?;
    gone.publish_json(&gone.outgoing_topic(group), &json!({"text": "still here", "channel_type": "group"})).await?;
    let own = format!("apps/{app}/users/m0/messages/{group}/clientadded");
    loop {
        let (topic, body) = next(&mut gone).await?;
        if topic == own && body["text"] == "still here" {
            ensure!(body["status"] == -100, "m0 posted after leaving: {body}");
            break;
        }
    }
    drop(processes);
    Ok(())
}
