//! Hostile input (issue 14): what a user with nothing but a JWT and an MQTT client, or write
//! access to the default exchange, must not be able to do to inboxd. One module per area.

mod api;
mod held;
mod plugins;
mod routing;
mod store;
