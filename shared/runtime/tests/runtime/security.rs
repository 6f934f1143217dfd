//! `[nats.auth]` and `[nats.tls]` against real servers that demand them: the fleet connects with
//! its credentials and certificates and works (topology ensured, a bucket written and read), is
//! refused without them, and every problem with a file it is given is named with the setting
//! and path — never with what the file holds.

use std::time::Duration;

use bytes::Bytes;
use fleet_config::Config;
use fleet_runtime::topology::names;
use fleet_runtime::{Runtime, RuntimeError, connect_client};
use fleet_testkit::NatsServer;
use fleet_testkit::jwt::TestOperator;
use fleet_testkit::pki::TestPki;

fn config_for(server: &NatsServer) -> Config {
    let mut config = Config::default();
    config.nats.url = server.url();
    config.nats.connect_timeout_ms = 3000;
    config
}

/// The fleet works over this connection: its topology ensured, a tenants-bucket key written
/// and read back.
async fn works(config: &Config) {
    let runtime = Runtime::connect(config)
        .await
        .expect("connects and ensures");
    let bucket = runtime.bucket(names::TENANTS).await.unwrap();
    bucket
        .put("probe", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let got = bucket.get("probe").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"{}"[..]));
}

/// `error` is a file setting's: `setting`, before anything connected.
fn assert_names_file(error: &RuntimeError, setting: &str) {
    assert!(
        matches!(error, RuntimeError::NatsFile { setting: named, .. } if *named == setting),
        "{error}"
    );
}

async fn refused(config: &Config) -> String {
    match tokio::time::timeout(Duration::from_secs(20), connect_client(config)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("connected without what the server demands"),
        Err(_) => panic!("neither connected nor refused within 20 s"),
    }
}

#[tokio::test]
async fn user_and_password_or_token_the_server_demands_and_nothing_else() {
    let server = NatsServer::start_with(
        "authorization {\n  users = [ { user: fleet, password: \"p4ss-word-secret\" } ]\n}\n",
    );
    let mut config = config_for(&server);
    let anonymous = refused(&config).await;
    assert!(
        anonymous.to_lowercase().contains("authorization"),
        "{anonymous}"
    );
    config.nats.auth.user = "fleet".into();
    config.nats.auth.password = "wrong-guess-secret".into();
    let wrong = refused(&config).await;
    assert!(wrong.to_lowercase().contains("authorization"), "{wrong}");
    assert!(!wrong.contains("wrong-guess-secret"), "{wrong}");
    config.nats.auth.password = "p4ss-word-secret".into();
    works(&config).await;
    let server = NatsServer::start_with("authorization {\n  token: \"t0ken-secret\"\n}\n");
    let mut config = config_for(&server);
    refused(&config).await;
    config.nats.auth.token = "t0ken-secret".into();
    works(&config).await;
}

#[tokio::test]
async fn an_nkey_seed_file_signs_the_servers_challenge() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("fleet.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let mut config = config_for(&server);
    refused(&config).await;
    config.nats.auth.nkey_seed_file = seed_file.display().to_string();
    works(&config).await;

    // Another user's seed: refused by the server.
    let stranger = nkeys::KeyPair::new_user();
    std::fs::write(&seed_file, stranger.seed().unwrap()).unwrap();
    refused(&config).await;
    // Not a seed, and no file at all: named before anything connects, the content not shown.
    std::fs::write(&seed_file, "not-a-seed-secret").unwrap();
    let error = connect_client(&config).await.unwrap_err();
    assert_names_file(&error, "nats.auth.nkey_seed_file");
    assert!(!error.to_string().contains("not-a-seed-secret"), "{error}");
    config.nats.auth.nkey_seed_file = dir.path().join("missing.nk").display().to_string();
    let error = connect_client(&config).await.unwrap_err().to_string();
    assert!(
        error.starts_with("nats.auth.nkey_seed_file (") && error.contains("missing.nk"),
        "{error}"
    );
    // A credentials file that is not one: the same.
    config.nats.auth.nkey_seed_file.clear();
    let creds = dir.path().join("fleet.creds");
    std::fs::write(&creds, "garbage-secret").unwrap();
    config.nats.auth.credentials_file = creds.display().to_string();
    let error = connect_client(&config).await.unwrap_err();
    assert_names_file(&error, "nats.auth.credentials_file");
    assert!(!error.to_string().contains("garbage-secret"), "{error}");
    assert!(
        error
            .to_string()
            .ends_with("cannot parse user JWT from the credentials file"),
        "{error}"
    );
}

/// Decentralized authentication (an operator's JWTs, as `nsc` sets it up): a user's `.creds`
/// file gets the fleet in with JetStream; an expired user's, a user of an account the server
/// does not know, and no credentials are refused; a file that is not a `.creds` is named.
#[tokio::test]
async fn a_credentials_file_of_an_operators_account() {
    let operator = TestOperator::new();
    let server = NatsServer::start_with(&operator.server_block());
    let mut config = config_for(&server);
    let anonymous = refused(&config).await;
    assert!(anonymous.contains("authorization violation"), "{anonymous}");
    config.nats.auth.credentials_file = operator.creds_file.display().to_string();
    works(&config).await;
    for file in [&operator.expired_creds_file, &operator.stranger_creds_file] {
        config.nats.auth.credentials_file = file.display().to_string();
        let error = refused(&config).await;
        assert!(error.contains("authorization violation"), "{error}");
    }
    let seed_only = operator.dir().join("seed-only.creds");
    std::fs::write(&seed_only, "SUAnot-a-creds-file-secret\n").unwrap();
    config.nats.auth.credentials_file = seed_only.display().to_string();
    let error = connect_client(&config).await.unwrap_err();
    assert_names_file(&error, "nats.auth.credentials_file");
    assert!(!error.to_string().contains("not-a-creds"), "{error}");
}

#[tokio::test]
async fn tls_to_a_server_that_verifies_its_clients() {
    let pki = TestPki::new();
    let server = NatsServer::start_with(&pki.server_tls_block(true));
    let mut config = config_for(&server);
    // Plain TCP, or TLS trusting only the system's roots: the server's certificate is not
    // trusted (and it wants a client certificate too).
    refused(&config).await;
    config.nats.tls.required = true;
    refused(&config).await;
    // The right CA but no client certificate: the server refuses.
    config.nats.tls.ca_file = pki.ca_file.display().to_string();
    refused(&config).await;
    // Everything: works.
    config.nats.tls.cert_file = pki.client_cert.display().to_string();
    config.nats.tls.key_file = pki.client_key.display().to_string();
    works(&config).await;
    // A tls:// URL asks for TLS as `required` does.
    let mut by_url = config.clone();
    by_url.nats.tls.required = false;
    by_url.nats.url = server.url().replace("nats://", "tls://");
    works(&by_url).await;
    // A client certificate, but trusting another CA: the server is not who it should be.
    config.nats.tls.ca_file = pki.other_ca_file.display().to_string();
    refused(&config).await;
    // A key file that is no key, a CA file that holds no certificate: named, before
    // connecting, without their content.
    std::fs::write(pki.dir().join("junk.pem"), "junk-secret").unwrap();
    let mut junk = config.clone();
    junk.nats.tls.ca_file = pki.ca_file.display().to_string();
    junk.nats.tls.key_file = pki.dir().join("junk.pem").display().to_string();
    let error = connect_client(&junk).await.unwrap_err();
    assert_names_file(&error, "nats.tls.key_file");
    junk.nats.tls.key_file = pki.client_key.display().to_string();
    junk.nats.tls.ca_file = pki.client_key.display().to_string();
    let error = connect_client(&junk).await.unwrap_err().to_string();
    assert!(
        error.starts_with("nats.tls.ca_file (") && error.contains("holds no"),
        "{error}"
    );
    assert!(
        !error.contains("junk-secret") && !error.contains("PRIVATE"),
        "{error}"
    );
    // A CA file that is not there: named, before connecting.
    config.nats.tls.ca_file = pki.dir().join("nope.pem").display().to_string();
    let error = connect_client(&config).await.unwrap_err();
    assert_names_file(&error, "nats.tls.ca_file");
}

/// A server that wants the TLS handshake before its greeting (`handshake_first`): a client set
/// the same way works; one that waits for the greeting is told what to set; and one that starts
/// with the handshake against a server greeting in plain text is told the server did not answer
/// in TLS.
#[tokio::test]
async fn tls_handshake_first_on_both_sides_or_a_hint_which_to_set() {
    let pki = TestPki::new();
    // The server hangs up on a client that has not begun the handshake within 1 s.
    let block = pki
        .server_tls_block(false)
        .replace("verify: false", "verify: false\n  handshake_first: true")
        .replace("timeout: 5", "timeout: 1");
    let server = NatsServer::start_with(&block);
    let mut config = config_for(&server);
    config.nats.tls.ca_file = pki.ca_file.display().to_string();
    let error = refused(&config).await;
    assert!(
        error.contains("set [nats.tls] handshake_first = true"),
        "{error}"
    );
    config.nats.tls.handshake_first = true;
    works(&config).await;
    // The same client against a server that greets first, over TLS or not.
    let greeting_first = NatsServer::start_with(&pki.server_tls_block(false));
    config.nats.url = greeting_first.url();
    let error = refused(&config).await;
    assert!(
        error.contains("the server did not answer in TLS"),
        "{error}"
    );
}

/// A server that requires TLS turns it on for a client whose settings say nothing of it: the
/// handshake needs rustls's crypto provider chosen all the same (it panicked when this test
/// ran alone in its process).
#[test]
fn a_server_requiring_tls_is_refused_not_a_panic_without_tls_settings() {
    let pki = TestPki::new();
    let server = NatsServer::start_with(&pki.server_tls_block(false));
    // A process of its own: no other test has chosen the provider before this one.
    if std::env::var_os("FLEET_SECURITY_CHILD").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "security::a_server_requiring_tls_is_refused_not_a_panic_without_tls_settings",
                "--exact",
                "--nocapture",
            ])
            .env("FLEET_SECURITY_CHILD", server.url())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the test in a process of its own: {status}"
        );
        return;
    }
    let url = std::env::var("FLEET_SECURITY_CHILD").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = Config::default();
        config.nats.url = url;
        let error = refused(&config).await;
        assert!(
            error.contains("UnknownIssuer") || error.contains("certificate"),
            "{error}"
        );
    });
}

#[tokio::test]
async fn required_tls_refuses_a_server_without_it() {
    let server = NatsServer::start();
    let mut config = config_for(&server);
    works(&config).await;
    config.nats.tls.required = true;
    let error = refused(&config).await;
    assert!(
        error.contains("the server did not answer in TLS"),
        "{error}"
    );
}
