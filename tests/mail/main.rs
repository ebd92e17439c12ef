//! The agent against the real mail stack (Postfix + Dovecot started by `scripts/mail-stack`; run
//! `scripts/test`): end to end, accounts, several devices, changes in several mail parts, OpenPGP,
//! quarantine, server quirks (through a proxy in front of the real Dovecot), trust, a new user's
//! first hour and the README's five minutes, and a server that hangs.
//!
//! These tests share the stack but each uses accounts of its own, so they run side by side; the
//! outages are in `mail_restart`, a binary of its own.

#[path = "../common/mod.rs"]
mod common;

mod account;
mod check_hangs;
mod devices;
mod e2e;
mod first_hour;
mod parts;
mod pgp;
mod quarantine;
mod quirks;
mod readme_five_minutes;
mod trust;
