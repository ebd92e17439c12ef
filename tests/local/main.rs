//! The agent and its command line on one machine, no mail server: `doc` edits and requests, the
//! first hour of a new user, bound JSON files, the shared-folder transport, the service under
//! systemd's rules, and SIGKILLs in the middle of a save.

mod bound_files;
mod doc_edit;
mod doc_requests;
mod first_hour;
mod folder_transport;
mod service;
mod store_kill;
