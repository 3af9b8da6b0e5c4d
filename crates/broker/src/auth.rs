//! Who may connect, publish and subscribe: anonymous access, the password file and
//! the ACL file, decided per request.

use auth::{Access, AclFile, PasswordFile};
use mqtt::ReasonCode;
use thiserror::Error;

use crate::config::Config;

/// A password or ACL file that could not be loaded.
#[derive(Debug, Error)]
pub enum AuthLoadError {
    /// The password file.
    #[error("password_file: {0}")]
    Password(#[from] auth::password::PasswordError),
    /// The ACL file.
    #[error("acl_file: {0}")]
    Acl(#[from] auth::acl::AclError),
}

/// The access-control decisions of one broker.
#[derive(Debug, Default)]
pub struct Authenticator {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    acl: Option<AclFile>,
}

impl Authenticator {
    /// Loads the files named in `config`.
    pub fn load(config: &Config) -> Result<Authenticator, AuthLoadError> {
        let passwords = config
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let acl = config.acl_file.as_deref().map(AclFile::load).transpose()?;
        Ok(Authenticator {
            allow_anonymous: config.allow_anonymous,
            passwords,
            acl,
        })
    }

    /// Decides a CONNECT: `Ok` or the v5 reason code to refuse it with.
    pub fn connect(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode> {
        match (username, &self.passwords) {
            (None, _) if self.allow_anonymous => Ok(()),
            (None, _) => Err(ReasonCode::NotAuthorized),
            // With no password file, a user name is just a label (as in Mosquitto).
            (Some(_), None) => Ok(()),
            (Some(user), Some(file)) => {
                if file.check(user, password.unwrap_or_default()) {
                    Ok(())
                } else {
                    Err(ReasonCode::BadUserNameOrPassword)
                }
            }
        }
    }

    /// Whether the ACL is in force (without one, everything is allowed).
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// Whether the client may publish to `topic`.
    pub fn can_write(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.allowed(client_id, username, topic, Access::Write))
    }

    /// Whether the client may subscribe to `filter` or receive a message on a topic.
    pub fn can_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.allowed(client_id, username, topic, Access::Read))
    }
}
