//! google.devtools.remoteworkers.v1test2.Bots over the engine's bot farm: checks the
//! instance (the session's farm) and the caller's `bot` role, and hands the session on.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::error::Error;
use crate::execution::bots::BotFarm;
use crate::proto::remoteworkers::{
    BotSession, CreateBotSessionRequest, UpdateBotSessionRequest, bots_server::Bots,
};
use crate::state::Context;

pub struct BotsService {
    ctx: Context,
}

impl BotsService {
    pub fn new(ctx: Context) -> Self {
        BotsService { ctx }
    }

    fn farm(&self) -> Result<&Arc<BotFarm>, Error> {
        self.ctx
            .execution
            .as_ref()
            .map(|engine| engine.bots())
            .ok_or_else(|| Error::Disabled("remote execution is disabled on this server".into()))
    }
}

/// The instance a session name belongs to: what precedes `botSessions/`.
fn instance_of_session(name: &str) -> Result<&str, Error> {
    match name.rsplit_once("botSessions/") {
        Some((prefix, id)) if !id.is_empty() && (prefix.is_empty() || prefix.ends_with('/')) => {
            Ok(prefix.strip_suffix('/').unwrap_or(prefix))
        }
        _ => Err(Error::BadInput(format!(
            "{name:?} is not a bot session name ([INSTANCE/]botSessions/ID)"
        ))),
    }
}

#[tonic::async_trait]
impl Bots for BotsService {
    async fn create_bot_session(
        &self,
        request: Request<CreateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        self.ctx.instance(&req.parent)?;
        crate::auth::authorize(&caller, &req.parent, Role::Bot)?;
        let bot = req
            .bot_session
            .ok_or_else(|| Error::BadInput("bot_session is required".into()))?;
        Ok(Response::new(self.farm()?.create(&req.parent, bot).await?))
    }

    async fn update_bot_session(
        &self,
        request: Request<UpdateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let instance = instance_of_session(&req.name)?;
        self.ctx.instance(instance)?;
        crate::auth::authorize(&caller, instance, Role::Bot)?;
        let bot = req
            .bot_session
            .ok_or_else(|| Error::BadInput("bot_session is required".into()))?;
        Ok(Response::new(self.farm()?.update(&req.name, bot).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_carry_their_instance() {
        assert_eq!(instance_of_session("botSessions/x").unwrap(), "");
        assert_eq!(instance_of_session("main/botSessions/x").unwrap(), "main");
        assert_eq!(instance_of_session("a/b/botSessions/x").unwrap(), "a/b");
        for bad in ["", "botSessions/", "x", "abotSessions/x"] {
            assert!(instance_of_session(bad).is_err(), "{bad:?}");
        }
    }
}
