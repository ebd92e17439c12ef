//! Sending a changes object by mail: in one mail when it fits the account's size, otherwise as a
//! transfer of part mails (see [`crate::transport::parts`]). A mail the SMTP server refuses as
//! too large (552, or 5.3.4) makes the whole changes object go again at once as a fresh transfer
//! of parts half that size (not below [`parts::MIN_MAIL_SIZE`]), and the smaller size is kept
//! for the account's SMTP server, so that later mails are cut to it from the start.

use crate::transport::mail::{MailTransport, envelope, smtp};
use crate::transport::parts;
use crate::transport::{Outgoing, SendError};

/// One finished mail: its SMTP envelope and its bytes.
type Mail = (lettre::address::Envelope, Vec<u8>);

impl MailTransport {
    /// The largest mail to send now: `max-mail-size`, or less if the SMTP server refused more.
    fn mail_limit(&self) -> Result<u64, SendError> {
        let learned = self
            .with_store(|s| s.mail_limit(&self.smtp.server_name()))
            .map_err(|e| SendError::Temporary(e.0))?;
        Ok(learned.map_or(self.account.max_mail_size, |l| {
            l.bytes.min(self.account.max_mail_size)
        }))
    }

    /// Sends a changes object in as many mails as its size needs; cuts it smaller and sends it
    /// again while the server refuses a mail as too large.
    ///
    /// # Errors
    ///
    /// The first failure of a mail other than a size refusal; a size refusal of a mail already
    /// at the smallest size; no way to cut the changes (see [`parts::plan`]).
    pub(super) async fn send_changes(&self, out: &Outgoing<'_>) -> Result<(), SendError> {
        let device = self.device_tag().map_err(SendError::Temporary)?;
        let me = self.sender(&device);
        let mut limit = self.mail_limit()?;
        loop {
            let mails = plan_mails(out, &me, limit)?;
            let failure = match self.send_all(&mails).await {
                Ok(()) => {
                    if mails.len() > 1 {
                        tracing::info!(parts = mails.len(), limit, "sent in parts");
                    }
                    return Ok(());
                }
                Err(f) => f,
            };
            let (failure, size) = failure;
            if !failure.too_large {
                return Err(failure.error);
            }
            let reason = failure.error.to_string();
            let server = self.smtp.server_name();
            let Some(smaller) = parts::smaller_limit(size) else {
                return Err(SendError::Permanent(format!(
                    "SMTP {server} refused a {size}-byte mail as too large ({reason}); mails are \
                     not cut below {} bytes",
                    parts::MIN_MAIL_SIZE
                )));
            };
            tracing::warn!(%server, refused = size, %reason, smaller, "a mail was refused as too large: sending it again in smaller parts, and no mail over that size from now on");
            self.with_store(|s| s.learn_mail_limit(&server, smaller, &reason))
                .map_err(|e| SendError::Temporary(e.0))?;
            limit = smaller;
        }
    }

    /// Sends the mails in order; stops at the first failure (with the size of its mail).
    async fn send_all(&self, mails: &[Mail]) -> Result<(), (smtp::Failure, u64)> {
        for (env, raw) in mails {
            self.smtp
                .send(env, raw)
                .await
                .map_err(|f| (f, raw.len() as u64))?;
        }
        Ok(())
    }
}

/// The mails that carry `out` at most `limit` bytes each: one whole, or the parts of a fresh
/// transfer, each part under a Message-ID of its own in the domain of `out`'s.
fn plan_mails(
    out: &Outgoing<'_>,
    me: &envelope::Sender<'_>,
    limit: u64,
) -> Result<Vec<Mail>, SendError> {
    let domain = out
        .message_id
        .trim_end_matches('>')
        .rsplit_once('@')
        .map_or("minisync.invalid", |(_, d)| d);
    let build = |piece: parts::Piece<'_>| {
        let message_id = match &piece.part {
            Some(p) => format!("<part{}.{}@{domain}>", p.index, p.transfer),
            None => out.message_id.to_string(),
        };
        let piece = envelope::Piece {
            body: piece.body,
            message_id: &message_id,
            part: piece.part.as_ref(),
        };
        envelope::build_piece(out, me, &piece)
    };
    parts::plan(out.body, out.message_id, limit, build, |m: &Mail| {
        m.1.len() as u64
    })
    .map_err(SendError::Permanent)
}
