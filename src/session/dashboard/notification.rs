//! An operator pushes a notification from a dashboard: answered with
//! `NotificationAccepted` once it is stored, or an `Error` carrying the request id.

use std::time::Duration;

use super::Dashboard;
use crate::{
    auth::Role,
    notify::{CreateError, Request},
    proto::{
        envelope::Body, error::Code, notification::Severity, Envelope, NotificationAccepted,
        NotificationRequest,
    },
    session::{
        close, error_for,
        reply::{Refusal, Reply},
    },
};

impl Dashboard {
    pub(super) async fn on_notification_request(&mut self, r: NotificationRequest) -> Reply {
        let request_id = r.request_id.clone();
        let refuse = |code: Code, message: String| -> Reply {
            Refusal::new(close::POLICY_VIOLATION, code, message)
                .for_request(request_id.clone())
                .into()
        };
        if self.role != Role::Operator {
            return refuse(
                Code::Forbidden,
                "only operators may push notifications".into(),
            );
        }
        let severity = Severity::try_from(r.severity).unwrap_or(Severity::Unspecified);
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(r.ttl_seconds)));
        let req = match Request::new(
            r.targets.unwrap_or_default(),
            severity,
            r.title,
            r.body,
            r.payload,
            ttl,
            &self.app.config.notify,
        ) {
            Ok(req) => req,
            Err(e) => return refuse(Code::Malformed, format!("invalid notification: {e}")),
        };
        let scope = self.scope.device_tags.as_ref();
        match self
            .app
            .notifier
            .create(req, &self.credential.sub, scope)
            .await
        {
            Ok(created) => Reply::send(Envelope {
                body: Some(Body::NotificationAccepted(NotificationAccepted {
                    request_id,
                    id: created.id,
                    targets: created.targets,
                    expires_ms: created.expires_ms,
                })),
            }),
            // The hub's failure, not the operator's: no strike.
            Err(CreateError::Store(e)) => {
                tracing::error!(error = %e, "storing a notification");
                Reply::Held(Some(error_for(
                    Code::Unavailable,
                    "the notification could not be stored; try again",
                    request_id,
                )))
            }
            Err(e @ CreateError::Forbidden(_)) => refuse(Code::Forbidden, e.to_string()),
            Err(e) => refuse(Code::Malformed, e.to_string()),
        }
    }
}
