//! CONNECT authentication: client id, user name and SAS token of a module.
//!
//! A module connects with client id `{device}/{module}`, user name
//! `{iothub_hostname}/{device}/{module}/?api-version=…` (the query is optional) and a SAS token
//! as password, signed with the module's key from the [`IdentityRegistry`]. Anything else is
//! refused with a reason (a Prometheus label) and the CONNACK code the client gets.

use edge_core::ModuleId;
use edge_core::identity::IdentityRegistry;
use edge_core::sas::{SasError, verify_token};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode};

/// Why a CONNECT was refused. The token itself never appears here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// No user name or password.
    #[error("no credentials")]
    MissingCredentials,
    /// The client id is not `{device}/{module}` with a valid module id.
    #[error("client id is not `{{device}}/{{module}}`")]
    BadClientId,
    /// The client id names another device.
    #[error("client id names another device")]
    WrongDevice,
    /// The user name does not match the client id and hub host.
    #[error("user name does not match the client id")]
    BadUsername,
    /// No identity exists for the module.
    #[error("unknown module")]
    UnknownModule,
    /// The SAS token was refused.
    #[error("token refused")]
    Token(#[source] SasError),
}

impl Refusal {
    /// The `reason` label of `edgehub_auth_refused_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::MissingCredentials => "missing_credentials",
            Refusal::BadClientId => "bad_client_id",
            Refusal::WrongDevice => "wrong_device",
            Refusal::BadUsername => "bad_username",
            Refusal::UnknownModule => "unknown_module",
            Refusal::Token(SasError::Expired { .. }) => "expired_token",
            Refusal::Token(SasError::Signature) => "bad_signature",
            Refusal::Token(SasError::Audience(_)) => "bad_audience",
            Refusal::Token(SasError::Format | SasError::KeyEncoding) => "bad_token",
        }
    }

    /// The CONNACK return code: 4 when credentials are missing, 5 (not authorised) otherwise,
    /// which Azure's SDKs turn into a `CredentialError`.
    pub(crate) fn code(&self) -> ConnectReturnCode {
        match self {
            Refusal::MissingCredentials => ConnectReturnCode::BadUserNamePassword,
            _ => ConnectReturnCode::NotAuthorized,
        }
    }
}

/// What the hub needs to check a CONNECT.
pub(crate) struct AuthContext<'a> {
    pub device: &'a str,
    pub hosts: [&'a str; 2],
    pub identities: &'a IdentityRegistry,
    /// Seconds since the unix epoch.
    pub now: u64,
}

/// Checks a CONNECT and returns the module it authenticates.
///
/// # Errors
/// The first [`Refusal`] that applies.
pub(crate) fn authenticate(connect: &Connect, ctx: &AuthContext<'_>) -> Result<ModuleId, Refusal> {
    let (device, module) = connect
        .client_id
        .split_once('/')
        .ok_or(Refusal::BadClientId)?;
    let module = ModuleId::new(module).map_err(|_| Refusal::BadClientId)?;
    if device != ctx.device {
        return Err(Refusal::WrongDevice);
    }
    let login = connect
        .login
        .as_ref()
        .filter(|l| !l.password.is_empty())
        .ok_or(Refusal::MissingCredentials)?;
    let user = login
        .username
        .split_once('?')
        .map_or(login.username.as_str(), |(u, _)| u);
    let user = user.strip_suffix('/').unwrap_or(user);
    let expected_tail = format!("/{device}/{module}");
    let user_ok = ctx.hosts.iter().any(|h| {
        user.strip_prefix(h)
            .is_some_and(|rest| rest == expected_tail)
    });
    if !user_ok {
        return Err(Refusal::BadUsername);
    }
    let key = ctx
        .identities
        .key(module.as_str())
        .ok_or(Refusal::UnknownModule)?;
    verify_token(
        &login.password,
        &key,
        ctx.now,
        &ctx.hosts,
        device,
        module.as_str(),
    )
    .map_err(Refusal::Token)?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::sas::{ModuleKey, make_token, module_uri};

    fn connect(client: &str, user: &str, pass: &str) -> Connect {
        let mut c = Connect::new(client);
        c.set_login(user, pass);
        c
    }

    #[test]
    fn accepts_azure_shaped_credentials_and_refuses_the_rest() {
        let ids = IdentityRegistry::new();
        let key_a = ModuleKey::generate().unwrap();
        let key_b = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new("a").unwrap(), key_a.clone());
        ids.insert(ModuleId::new("b").unwrap(), key_b);
        let ctx = AuthContext {
            device: "dev",
            hosts: ["hub.example", "gw"],
            identities: &ids,
            now: 1_000,
        };
        let token_a = make_token(&key_a, &module_uri("hub.example", "dev", "a"), 2_000);
        let user_a = "hub.example/dev/a/?api-version=2021-04-12";
        assert_eq!(
            authenticate(&connect("dev/a", user_a, &token_a), &ctx)
                .unwrap()
                .as_str(),
            "a"
        );
        assert!(authenticate(&connect("dev/a", "hub.example/dev/a", &token_a), &ctx).is_ok());
        assert!(authenticate(&connect("dev/a", "gw/dev/a/", &token_a), &ctx).is_ok());

        let refusal = |c: Connect| authenticate(&c, &ctx).unwrap_err().reason();
        assert_eq!(refusal(Connect::new("dev/a")), "missing_credentials");
        assert_eq!(refusal(connect("a", user_a, &token_a)), "bad_client_id");
        assert_eq!(
            refusal(connect("other/a", user_a, &token_a)),
            "wrong_device"
        );
        assert_eq!(
            refusal(connect("dev/a", "hub.example/dev/b", &token_a)),
            "bad_username"
        );
        assert_eq!(
            refusal(connect("dev/c", "hub.example/dev/c", &token_a)),
            "unknown_module"
        );
        // Module a claims b's identity with a token signed by its own key.
        let forged = make_token(&key_a, &module_uri("hub.example", "dev", "b"), 2_000);
        assert_eq!(
            refusal(connect("dev/b", "hub.example/dev/b", &forged)),
            "bad_signature"
        );
        // Module a presents its own token for b's client id.
        assert_eq!(
            refusal(connect("dev/b", "hub.example/dev/b", &token_a)),
            "bad_signature"
        );
        let old = make_token(&key_a, &module_uri("hub.example", "dev", "a"), 999);
        assert_eq!(refusal(connect("dev/a", user_a, &old)), "expired_token");
        assert_eq!(refusal(connect("dev/a", user_a, "secret")), "bad_token");
        assert_eq!(
            Refusal::MissingCredentials.code(),
            ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(
            Refusal::UnknownModule.code(),
            ConnectReturnCode::NotAuthorized
        );
    }
}
