//! The OpenPGP operations agent mail needs, on rPGP (the `pgp` crate): an account key (Ed25519
//! for signing and certifying, an X25519 subkey for encryption), one signed, compressed and
//! encrypted message per mail (RFC 3156 §6.2: signature inside the encryption), and a signed,
//! unencrypted message for the hello that carries a key before the peer's key is known.
//!
//! Nothing here decides whom to trust: [`open`] says which key signed (the one the mail's
//! `Autocrypt:` header carries) and the agent compares it with the key pinned for the sender.

use std::io::Read;

use pgp::composed::{
    ArmorOptions, Deserializable, EncryptionCaps, KeyType, Message, MessageBuilder,
    SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::ser::Serialize;
use pgp::types::{CompressionAlgorithm, KeyDetails, Password};

/// Why an OpenPGP operation failed, in words that name what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key (ours from the state, or a peer's from a mail) cannot be read or is not usable.
    #[error("bad OpenPGP key: {0}")]
    Key(String),
    /// The message is not encrypted to our key, or is broken.
    #[error("the message does not decrypt with this account's key: {0}")]
    Decrypt(String),
    /// The message carries no signature.
    #[error("the message is not signed")]
    Unsigned,
    /// The signature does not verify with the sender's key.
    #[error("bad signature: it does not verify with the key of the sender ({0})")]
    BadSignature(String),
    /// Decrypted and decompressed, the message would be larger than allowed.
    #[error("the message decrypts to more than {0} MiB")]
    TooLarge(u64),
    /// Building a message failed (our side).
    #[error("cannot build the OpenPGP message: {0}")]
    Build(String),
}

fn key_err(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Key(e.to_string())
}

/// An account's secret key (transferable secret key, RFC 9580 §10.2).
#[derive(Debug, Clone)]
pub struct SecretKey(SignedSecretKey);

/// A peer's (or our own) public key (transferable public key).
#[derive(Debug, Clone)]
pub struct PublicKey(SignedPublicKey);

/// Creates the key of an account: an Ed25519 primary key that signs and certifies, with the
/// address as its user ID, and an X25519 (ECDH Curve25519) subkey that encrypts; the key shape
/// Autocrypt Level 1 recommends.
///
/// # Errors
///
/// [`CryptoError::Build`] when rPGP refuses the parameters (not expected).
pub fn generate(address: &str) -> Result<SecretKey, CryptoError> {
    let build = |e: &dyn std::fmt::Display| CryptoError::Build(e.to_string());
    let mut enc = SubkeyParamsBuilder::default();
    enc.key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(format!("<{address}>"))
        .subkeys(vec![enc.build().map_err(|e| build(&e))?]);
    let params = params.build().map_err(|e| build(&e))?;
    let key = params
        .generate(rand08::thread_rng())
        .map_err(|e| build(&e))?;
    Ok(SecretKey(key))
}

impl SecretKey {
    /// Reads an ASCII-armored secret key (as [`Self::to_armored`] writes it).
    ///
    /// # Errors
    ///
    /// [`CryptoError::Key`] when it is not a valid secret key with intact self-signatures.
    pub fn from_armored(text: &str) -> Result<SecretKey, CryptoError> {
        let (key, _) = SignedSecretKey::from_armor_single(text.as_bytes()).map_err(key_err)?;
        key.verify_bindings().map_err(key_err)?;
        Ok(SecretKey(key))
    }

    /// The key ASCII-armored.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Key`] if rPGP cannot write it (not expected).
    pub fn to_armored(&self) -> Result<String, CryptoError> {
        self.0
            .to_armored_string(ArmorOptions::default())
            .map_err(key_err)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(SignedPublicKey::from(self.0.clone()))
    }

    /// The fingerprint (40 upper-case hex digits).
    pub fn fingerprint(&self) -> String {
        format!("{:X}", self.0.fingerprint())
    }
}

impl PublicKey {
    /// Reads a binary transferable public key (as the `keydata` of an `Autocrypt:` header
    /// carries it) and checks that its self-signatures hold and that it can encrypt.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Key`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, CryptoError> {
        let key = SignedPublicKey::from_bytes(bytes).map_err(key_err)?;
        key.verify_bindings().map_err(key_err)?;
        let key = PublicKey(key);
        key.encryption_subkey()?;
        Ok(key)
    }

    /// The binary transferable public key.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Key`] if rPGP cannot write it (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        self.0.to_bytes().map_err(key_err)
    }

    /// The fingerprint (40 upper-case hex digits).
    pub fn fingerprint(&self) -> String {
        format!("{:X}", self.0.fingerprint())
    }

    fn encryption_subkey(&self) -> Result<&pgp::composed::SignedPublicSubKey, CryptoError> {
        self.0
            .public_subkeys
            .iter()
            .find(|k| k.algorithm().can_encrypt())
            .ok_or_else(|| CryptoError::Key("it has no encryption subkey".into()))
    }
}

/// Signs `data` with `signer`, compresses it (ZLIB) and encrypts it to every key in `to`
/// (SEIPD v1, AES-256): one ASCII-armored OpenPGP message (RFC 3156 §6.2, RFC 9580).
///
/// # Errors
///
/// [`CryptoError::Key`] when a recipient key cannot encrypt, [`CryptoError::Build`] otherwise.
pub fn seal(data: Vec<u8>, signer: &SecretKey, to: &[&PublicKey]) -> Result<String, CryptoError> {
    let mut rng = rand08::thread_rng();
    let mut builder = MessageBuilder::from_bytes("", data);
    builder.compression(CompressionAlgorithm::ZLIB);
    let mut builder = builder.seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    for key in to {
        let sub = key.encryption_subkey()?;
        builder
            .encrypt_to_key(&mut rng, sub)
            .map_err(|e| CryptoError::Build(e.to_string()))?;
    }
    builder.sign(&*signer.0, Password::empty(), HashAlgorithm::Sha256);
    builder
        .to_armored_string(&mut rng, ArmorOptions::default())
        .map_err(|e| CryptoError::Build(e.to_string()))
}

/// Decrypts an armored message with `ours`, decompresses it (refusing more than `limit`
/// bytes) and checks that `sender` signed it. Returns the signed data.
///
/// # Errors
///
/// [`CryptoError::Decrypt`] (not for our key, or broken), [`CryptoError::Unsigned`],
/// [`CryptoError::BadSignature`], [`CryptoError::TooLarge`].
pub fn open(
    armored: &[u8],
    ours: &SecretKey,
    sender: &PublicKey,
    limit: u64,
) -> Result<Vec<u8>, CryptoError> {
    let decrypt = |e: &dyn std::fmt::Display| CryptoError::Decrypt(e.to_string());
    let (msg, _) = Message::from_armor(armored).map_err(|e| decrypt(&e))?;
    if !msg.is_encrypted() {
        return Err(CryptoError::Decrypt("it is not encrypted".into()));
    }
    let msg = msg
        .decrypt(&Password::empty(), &ours.0)
        .map_err(|e| decrypt(&e))?;
    read_verified(msg, sender, limit)
}

/// Encrypts `data` with a password (the setup code of `agent device add`): an armored OpenPGP
/// message, compressed, then encrypted with AES-256 under a key derived from the code by an
/// iterated and salted S2K (the Autocrypt Setup Message's scheme).
///
/// # Errors
///
/// [`CryptoError::Build`] if rPGP cannot build it (not expected).
pub fn seal_with_code(data: Vec<u8>, code: &str) -> Result<String, CryptoError> {
    let mut rng = rand08::thread_rng();
    let mut builder = MessageBuilder::from_bytes("", data);
    builder.compression(CompressionAlgorithm::ZLIB);
    let mut builder = builder.seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    builder
        .encrypt_with_password(
            pgp::types::StringToKey::new_default(&mut rng),
            &Password::from(code),
        )
        .map_err(|e| CryptoError::Build(e.to_string()))?;
    builder
        .to_armored_string(&mut rng, ArmorOptions::default())
        .map_err(|e| CryptoError::Build(e.to_string()))
}

/// Decrypts a message sealed by [`seal_with_code`] (at most `limit` bytes).
///
/// # Errors
///
/// [`CryptoError::Decrypt`] when the code does not open it (a wrong code) or it is broken,
/// [`CryptoError::TooLarge`].
pub fn open_with_code(armored: &[u8], code: &str, limit: u64) -> Result<Vec<u8>, CryptoError> {
    let decrypt = |e: &dyn std::fmt::Display| CryptoError::Decrypt(e.to_string());
    let (msg, _) = Message::from_armor(armored).map_err(|e| decrypt(&e))?;
    if !msg.is_encrypted() {
        return Err(CryptoError::Decrypt("it is not encrypted".into()));
    }
    let msg = msg
        .decrypt_with_password(&Password::from(code))
        .map_err(|e| decrypt(&e))?;
    let mut msg = if msg.is_compressed() {
        msg.decompress().map_err(|e| decrypt(&e))?
    } else {
        msg
    };
    let mut data = Vec::new();
    (&mut msg)
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| decrypt(&e))?;
    if data.len() as u64 > limit {
        return Err(CryptoError::TooLarge(limit / (1024 * 1024)));
    }
    Ok(data)
}

/// Signs `data` with `signer` without encrypting it (the hello): an armored OpenPGP message.
///
/// # Errors
///
/// [`CryptoError::Build`] if rPGP cannot build it (not expected).
pub fn sign(data: Vec<u8>, signer: &SecretKey) -> Result<String, CryptoError> {
    let mut rng = rand08::thread_rng();
    let mut builder = MessageBuilder::from_bytes("", data);
    builder.sign(&*signer.0, Password::empty(), HashAlgorithm::Sha256);
    builder
        .to_armored_string(&mut rng, ArmorOptions::default())
        .map_err(|e| CryptoError::Build(e.to_string()))
}

/// Reads a signed, unencrypted armored message (as [`sign`] writes it) and checks that `sender`
/// signed it. Returns the signed data.
///
/// # Errors
///
/// [`CryptoError::Decrypt`] when it cannot be read, [`CryptoError::Unsigned`],
/// [`CryptoError::BadSignature`], [`CryptoError::TooLarge`].
pub fn verify(armored: &[u8], sender: &PublicKey, limit: u64) -> Result<Vec<u8>, CryptoError> {
    let (msg, _) = Message::from_armor(armored).map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    read_verified(msg, sender, limit)
}

/// Decompresses a decrypted (or plain) message, reads its data (at most `limit` bytes) and
/// verifies its signature with `sender`.
fn read_verified(msg: Message<'_>, sender: &PublicKey, limit: u64) -> Result<Vec<u8>, CryptoError> {
    let decrypt = |e: &dyn std::fmt::Display| CryptoError::Decrypt(e.to_string());
    let mut msg = if msg.is_compressed() {
        msg.decompress().map_err(|e| decrypt(&e))?
    } else {
        msg
    };
    if !msg.is_signed() {
        return Err(CryptoError::Unsigned);
    }
    let mut data = Vec::new();
    (&mut msg)
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| decrypt(&e))?;
    if data.len() as u64 > limit {
        return Err(CryptoError::TooLarge(limit / (1024 * 1024)));
    }
    msg.verify(&sender.0.primary_key)
        .map_err(|e| CryptoError::BadSignature(e.to_string()))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_have_the_recommended_shape() {
        let k = generate("alice@example.test").unwrap();
        assert_eq!(k.fingerprint().len(), 40);
        let again = SecretKey::from_armored(&k.to_armored().unwrap()).unwrap();
        assert_eq!(again.fingerprint(), k.fingerprint());
        let p = PublicKey::from_bytes(&k.public().to_bytes().unwrap()).unwrap();
        assert_eq!(p.fingerprint(), k.fingerprint());
        assert!(PublicKey::from_bytes(b"not a key").is_err());
        assert!(SecretKey::from_armored("-----BEGIN PGP PRIVATE KEY BLOCK-----\n").is_err());
        assert_ne!(
            generate("alice@example.test").unwrap().fingerprint(),
            k.fingerprint()
        );
    }

    #[test]
    fn seal_and_open_round_trip_for_every_recipient_and_refuse_the_rest() {
        let (a, b, m) = (
            generate("a@example.test").unwrap(),
            generate("b@example.test").unwrap(),
            generate("m@example.test").unwrap(),
        );
        let data = format!("{{\"x\":\"{}\"}}", "y".repeat(100_000)).into_bytes();
        let sealed = seal(data.clone(), &a, &[&b.public(), &a.public()]).unwrap();
        assert!(sealed.starts_with("-----BEGIN PGP MESSAGE-----"));
        assert!(sealed.len() < 20_000, "compressed before encryption");
        assert_eq!(
            open(sealed.as_bytes(), &b, &a.public(), 1 << 20).unwrap(),
            data
        );
        assert_eq!(
            open(sealed.as_bytes(), &a, &a.public(), 1 << 20).unwrap(),
            data
        );
        let e = open(sealed.as_bytes(), &m, &a.public(), 1 << 20).unwrap_err();
        assert!(matches!(e, CryptoError::Decrypt(_)), "{e}");
        let e = open(sealed.as_bytes(), &b, &m.public(), 1 << 20).unwrap_err();
        assert!(matches!(e, CryptoError::BadSignature(_)), "{e}");
        let e = open(sealed.as_bytes(), &b, &a.public(), 1000).unwrap_err();
        assert!(matches!(e, CryptoError::TooLarge(_)), "{e}");
    }

    #[test]
    fn a_message_sealed_with_a_code_opens_with_that_code_only() {
        let sealed = seal_with_code(b"the key".to_vec(), "1234-5678").unwrap();
        assert_eq!(
            open_with_code(sealed.as_bytes(), "1234-5678", 100).unwrap(),
            b"the key"
        );
        let e = open_with_code(sealed.as_bytes(), "1234-5679", 100).unwrap_err();
        assert!(matches!(e, CryptoError::Decrypt(_)), "{e}");
        assert!(open_with_code(b"not armored", "1234-5678", 100).is_err());
        let e = open_with_code(sealed.as_bytes(), "1234-5678", 3).unwrap_err();
        assert!(matches!(e, CryptoError::TooLarge(_)), "{e}");
    }

    #[test]
    fn tampered_unsigned_and_unencrypted_messages_are_refused() {
        let (a, b) = (
            generate("a@example.test").unwrap(),
            generate("b@example.test").unwrap(),
        );
        let sealed = seal(b"hello".to_vec(), &a, &[&b.public()]).unwrap();
        // Flip one character of the base64 body.
        let mut bytes = sealed.into_bytes();
        let at = bytes.len() / 2;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let e = open(&bytes, &b, &a.public(), 1 << 20).unwrap_err();
        assert!(matches!(e, CryptoError::Decrypt(_)), "{e}");
        // Encrypted but not signed.
        let mut rng = rand08::thread_rng();
        let mut builder = MessageBuilder::from_bytes("", b"unsigned".to_vec())
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        builder
            .encrypt_to_key(&mut rng, b.public().encryption_subkey().unwrap())
            .unwrap();
        let unsigned = builder
            .to_armored_string(&mut rng, ArmorOptions::default())
            .unwrap();
        let e = open(unsigned.as_bytes(), &b, &a.public(), 1 << 20).unwrap_err();
        assert_eq!(e, CryptoError::Unsigned);
        // Signed only: `open` wants encryption, `verify` takes it.
        let signed = sign(b"hi".to_vec(), &a).unwrap();
        assert!(open(signed.as_bytes(), &b, &a.public(), 1 << 20).is_err());
        assert_eq!(verify(signed.as_bytes(), &a.public(), 100).unwrap(), b"hi");
        let e = verify(signed.as_bytes(), &b.public(), 100).unwrap_err();
        assert!(matches!(e, CryptoError::BadSignature(_)), "{e}");
    }
}
