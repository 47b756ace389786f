//! Page texts in French (default) and English.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub enum Lang {
    #[default]
    Fr,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    /// First supported language of `ui_locales` (space separated) or of an
    /// Accept-Language header; French otherwise.
    pub fn negotiate(ui_locales: Option<&str>, accept_language: Option<&str>) -> Lang {
        let pick = |tag: &str| {
            let primary = tag
                .trim()
                .split(['-', '_', ';'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            match primary.as_str() {
                "fr" => Some(Lang::Fr),
                "en" => Some(Lang::En),
                _ => None,
            }
        };
        if let Some(l) = ui_locales.and_then(|u| u.split_whitespace().find_map(pick)) {
            return l;
        }
        accept_language
            .and_then(|a| a.split(',').find_map(pick))
            .unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub footer: &'static str,
    pub choose_title: &'static str,
    pub choose_intro: &'static str,
    pub idp_level_too_low: &'static str,
    pub back_to_service: &'static str,
    pub consent_title: &'static str,
    pub signing_in_as: &'static str,
    pub consent_intro: &'static str,
    pub consent_checkbox: &'static str,
    pub via_provider: &'static str,
    #[serde(rename = "continue")]
    pub continue_: &'static str,
    pub cancel: &'static str,
    pub error_title: &'static str,
    pub error_code: &'static str,
    pub logout_title: &'static str,
    pub logout_confirm: &'static str,
    pub logout_button: &'static str,
    pub logged_out_title: &'static str,
    pub logged_out: &'static str,
    pub email_title: &'static str,
    pub email_intro: &'static str,
    pub email_label: &'static str,
}

static FR: Messages = Messages {
    footer: "Relais — service de connexion. Vos données ne sont transmises qu'avec votre accord.",
    choose_title: "Choisissez un compte pour vous connecter",
    choose_intro: "{client} vous propose de vous connecter avec un compte que vous avez déjà.",
    idp_level_too_low: "Ce compte n'offre pas le niveau de sécurité demandé par le service.",
    back_to_service: "Revenir au service",
    consent_title: "Vérifiez les informations transmises",
    signing_in_as: "Vous vous connectez en tant que",
    consent_intro: "Les informations suivantes vont être transmises à {client} :",
    consent_checkbox: "J'accepte que ces informations soient transmises à {client}.",
    via_provider: "Identité fournie par",
    continue_: "Continuer",
    cancel: "Annuler",
    error_title: "Une erreur est survenue",
    error_code: "Code d'erreur :",
    logout_title: "Déconnexion",
    logout_confirm: "Voulez-vous vous déconnecter de Relais ?",
    logout_button: "Me déconnecter",
    logged_out_title: "Vous êtes déconnecté",
    logged_out: "Vous êtes déconnecté de Relais. Vous pouvez fermer cette page.",
    email_title: "Connexion des agents",
    email_intro: "Pour accéder à {client}, indiquez votre adresse électronique professionnelle : nous vous dirigerons vers le compte de votre administration.",
    email_label: "Adresse électronique professionnelle",
};

static EN: Messages = Messages {
    footer: "Relais — sign-in service. Your data is only shared with your agreement.",
    choose_title: "Choose an account to sign in",
    choose_intro: "{client} lets you sign in with an account you already have.",
    idp_level_too_low: "This account does not offer the security level the service asks for.",
    back_to_service: "Back to the service",
    consent_title: "Check the information to be shared",
    signing_in_as: "You are signing in as",
    consent_intro: "The following information will be sent to {client}:",
    consent_checkbox: "I agree that this information is sent to {client}.",
    via_provider: "Identity provided by",
    continue_: "Continue",
    cancel: "Cancel",
    error_title: "Something went wrong",
    error_code: "Error code:",
    logout_title: "Sign out",
    logout_confirm: "Do you want to sign out of Relais?",
    logout_button: "Sign me out",
    logged_out_title: "You are signed out",
    logged_out: "You are signed out of Relais. You can close this page.",
    email_title: "Sign-in for public agents",
    email_intro: "To reach {client}, enter your professional email address: we will send you to your organisation's account.",
    email_label: "Professional email address",
};

pub fn messages(lang: Lang) -> &'static Messages {
    match lang {
        Lang::Fr => &FR,
        Lang::En => &EN,
    }
}

/// Human-readable labels of claims on the consent page.
pub fn claim_label(lang: Lang, claim: &str) -> &'static str {
    match (lang, claim) {
        (Lang::Fr, "given_name") => "Prénoms",
        (Lang::Fr, "family_name") => "Nom de naissance",
        (Lang::Fr, "birthdate") => "Date de naissance",
        (Lang::Fr, "gender") => "Sexe",
        (Lang::Fr, "birthplace") => "Lieu de naissance",
        (Lang::Fr, "birthcountry") => "Pays de naissance",
        (Lang::Fr, "email") => "Adresse électronique",
        (Lang::Fr, "preferred_username") => "Nom d'usage",
        (Lang::Fr, "idp_id") => "Fournisseur d'identité utilisé",
        (Lang::Fr, "amr") => "Méthode d'authentification",
        (Lang::Fr, "sub") => "Identifiant technique",
        (Lang::Fr, "usual_name") => "Nom d'usage",
        (Lang::Fr, "uid") => "Identifiant dans l'administration",
        (Lang::Fr, "siret") => "SIRET de la structure",
        (Lang::Fr, "siren") => "SIREN de la structure",
        (Lang::Fr, "organizational_unit") => "Service",
        (Lang::Fr, "belonging_population") => "Population d'appartenance",
        (Lang::Fr, "phone_number") => "Téléphone",
        (Lang::Fr, "idp_acr") => "Niveau d'authentification du fournisseur",
        (Lang::Fr, "custom") => "Autres informations du fournisseur",
        (Lang::En, "given_name") => "Given names",
        (Lang::En, "family_name") => "Birth name",
        (Lang::En, "birthdate") => "Birth date",
        (Lang::En, "gender") => "Gender",
        (Lang::En, "birthplace") => "Birthplace",
        (Lang::En, "birthcountry") => "Birth country",
        (Lang::En, "email") => "Email address",
        (Lang::En, "preferred_username") => "Usage name",
        (Lang::En, "idp_id") => "Identity provider used",
        (Lang::En, "amr") => "Authentication method",
        (Lang::En, "sub") => "Technical identifier",
        (Lang::En, "usual_name") => "Usual name",
        (Lang::En, "uid") => "Identifier in the organisation",
        (Lang::En, "siret") => "Organisation SIRET",
        (Lang::En, "siren") => "Organisation SIREN",
        (Lang::En, "organizational_unit") => "Department",
        (Lang::En, "belonging_population") => "Population",
        (Lang::En, "phone_number") => "Phone",
        (Lang::En, "idp_acr") => "Provider's authentication level",
        (Lang::En, "custom") => "Other provider information",
        _ => "",
    }
}

/// The code of an HTML error page: shown on the page (so a person can quote
/// it to the help desk), logged, and the key of its French and English text.
/// A closed list: a page cannot show a code without a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCode {
    InvalidClient,
    InvalidRedirectUri,
    InteractionExpired,
    Csrf,
    AccessDenied,
    UpstreamError,
    UpstreamMixup,
    CallbackMoved,
    UpstreamUnavailable,
    UpstreamInvalidToken,
    InvalidIdentity,
    RegistryRefused,
    TemporarilyUnavailable,
    AcrNotSatisfied,
    NotFound,
    NoProviderForDomain,
    DomainNotAllowed,
    InvalidEmail,
    MandateRefused,
    TooManyAttempts,
    RequestTooLarge,
    ServerError,
    InvalidRequest,
}

impl PageCode {
    /// Every code (for the tests of the texts).
    pub const ALL: [PageCode; 23] = [
        PageCode::InvalidClient,
        PageCode::InvalidRedirectUri,
        PageCode::InteractionExpired,
        PageCode::Csrf,
        PageCode::AccessDenied,
        PageCode::UpstreamError,
        PageCode::UpstreamMixup,
        PageCode::CallbackMoved,
        PageCode::UpstreamUnavailable,
        PageCode::UpstreamInvalidToken,
        PageCode::InvalidIdentity,
        PageCode::RegistryRefused,
        PageCode::TemporarilyUnavailable,
        PageCode::AcrNotSatisfied,
        PageCode::NotFound,
        PageCode::NoProviderForDomain,
        PageCode::DomainNotAllowed,
        PageCode::InvalidEmail,
        PageCode::MandateRefused,
        PageCode::TooManyAttempts,
        PageCode::RequestTooLarge,
        PageCode::ServerError,
        PageCode::InvalidRequest,
    ];

    /// The code as shown and logged (`interaction_expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            PageCode::InvalidClient => "invalid_client",
            PageCode::InvalidRedirectUri => "invalid_redirect_uri",
            PageCode::InteractionExpired => "interaction_expired",
            PageCode::Csrf => "csrf",
            PageCode::AccessDenied => "access_denied",
            PageCode::UpstreamError => "upstream_error",
            PageCode::UpstreamMixup => "upstream_mixup",
            PageCode::CallbackMoved => "callback_moved",
            PageCode::UpstreamUnavailable => "upstream_unavailable",
            PageCode::UpstreamInvalidToken => "upstream_invalid_token",
            PageCode::InvalidIdentity => "invalid_identity",
            PageCode::RegistryRefused => "registry_refused",
            PageCode::TemporarilyUnavailable => "temporarily_unavailable",
            PageCode::AcrNotSatisfied => "acr_not_satisfied",
            PageCode::NotFound => "not_found",
            PageCode::NoProviderForDomain => "no_provider_for_domain",
            PageCode::DomainNotAllowed => "domain_not_allowed",
            PageCode::InvalidEmail => "invalid_email",
            PageCode::MandateRefused => "mandate_refused",
            PageCode::TooManyAttempts => "too_many_attempts",
            PageCode::RequestTooLarge => "request_too_large",
            PageCode::ServerError => "server_error",
            PageCode::InvalidRequest => "invalid_request",
        }
    }
}

impl std::fmt::Display for PageCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text for an error code shown on error pages.
pub fn error_text(lang: Lang, code: PageCode) -> &'static str {
    match (lang, code) {
        (Lang::Fr, PageCode::InvalidClient) => "Ce service n'est pas reconnu par Relais.",
        (Lang::Fr, PageCode::InvalidRedirectUri) => {
            "L'adresse de retour de ce service n'est pas enregistrée."
        }
        (Lang::Fr, PageCode::InteractionExpired) => {
            "Votre demande de connexion a expiré ou n'existe pas. Recommencez depuis le service."
        }
        (Lang::Fr, PageCode::Csrf) => {
            "Le formulaire a expiré ou n'est pas valide. Recommencez depuis le service."
        }
        (Lang::Fr, PageCode::AccessDenied) => "La connexion a été refusée ou annulée.",
        (Lang::Fr, PageCode::UpstreamError) => "Le fournisseur d'identité a renvoyé une erreur.",
        (Lang::Fr, PageCode::UpstreamMixup) => {
            "La réponse reçue ne vient pas du fournisseur d'identité choisi pour cette connexion : elle est refusée. Recommencez depuis le service."
        }
        (Lang::Fr, PageCode::CallbackMoved) => {
            "Ce fournisseur d'identité renvoie vers une ancienne adresse de Relais : la connexion ne peut pas aboutir. Choisissez un autre fournisseur ou réessayez plus tard."
        }
        (Lang::Fr, PageCode::UpstreamUnavailable) => {
            "Le fournisseur d'identité ne répond pas. Réessayez plus tard."
        }
        (Lang::Fr, PageCode::UpstreamInvalidToken) => {
            "La réponse du fournisseur d'identité n'a pas pu être vérifiée."
        }
        (Lang::Fr, PageCode::InvalidIdentity) => {
            "L'identité transmise par le fournisseur d'identité est incomplète ou invalide."
        }
        (Lang::Fr, PageCode::RegistryRefused) => {
            "Votre identité n'a pas pu être confirmée auprès du répertoire national."
        }
        (Lang::Fr, PageCode::TemporarilyUnavailable) => {
            "Le service est momentanément indisponible. Réessayez plus tard."
        }
        (Lang::Fr, PageCode::AcrNotSatisfied) => {
            "Le niveau de sécurité obtenu est inférieur à celui demandé par le service."
        }
        (Lang::Fr, PageCode::NotFound) => "Page introuvable.",
        (Lang::Fr, PageCode::NoProviderForDomain) => "Aucun fournisseur d'identité n'est rattaché au domaine de cette adresse électronique.",
        (Lang::Fr, PageCode::DomainNotAllowed) => "Ce fournisseur d'identité n'est pas habilité pour le domaine de votre adresse électronique.",
        (Lang::Fr, PageCode::InvalidEmail) => "L'adresse électronique n'est pas valide.",
        (Lang::Fr, PageCode::MandateRefused) => "Ce mandat ne permet pas d'agir pour cet usager auprès de ce service : il a expiré, a été révoqué, ne couvre pas cette démarche ou n'appartient pas à votre structure.",
        (Lang::Fr, PageCode::TooManyAttempts) => "Trop de tentatives de connexion. Réessayez plus tard.",
        (Lang::Fr, PageCode::RequestTooLarge) => "La demande est trop volumineuse.",
        (Lang::Fr, PageCode::ServerError) => "Erreur interne. Réessayez plus tard.",
        (Lang::Fr, PageCode::InvalidRequest) => "La demande n'est pas valide.",
        (Lang::En, PageCode::InvalidClient) => "This service is not known to Relais.",
        (Lang::En, PageCode::InvalidRedirectUri) => "This service's return address is not registered.",
        (Lang::En, PageCode::InteractionExpired) => {
            "Your sign-in request has expired or does not exist. Start again from the service."
        }
        (Lang::En, PageCode::Csrf) => "The form has expired or is invalid. Start again from the service.",
        (Lang::En, PageCode::AccessDenied) => "The sign-in was refused or cancelled.",
        (Lang::En, PageCode::UpstreamError) => "The identity provider returned an error.",
        (Lang::En, PageCode::UpstreamMixup) => {
            "The answer received does not come from the identity provider chosen for this sign-in: it is refused. Start again from the service."
        }
        (Lang::En, PageCode::CallbackMoved) => {
            "This identity provider returns to a former address of Relais: the sign-in cannot complete. Choose another provider or try again later."
        }
        (Lang::En, PageCode::UpstreamUnavailable) => {
            "The identity provider does not answer. Try again later."
        }
        (Lang::En, PageCode::UpstreamInvalidToken) => {
            "The identity provider's answer could not be verified."
        }
        (Lang::En, PageCode::InvalidIdentity) => {
            "The identity sent by the identity provider is incomplete or invalid."
        }
        (Lang::En, PageCode::RegistryRefused) => {
            "Your identity could not be confirmed with the national registry."
        }
        (Lang::En, PageCode::TemporarilyUnavailable) => {
            "The service is temporarily unavailable. Try again later."
        }
        (Lang::En, PageCode::AcrNotSatisfied) => {
            "The security level obtained is lower than the one the service asked for."
        }
        (Lang::En, PageCode::NotFound) => "Page not found.",
        (Lang::En, PageCode::NoProviderForDomain) => "No identity provider is attached to this email address's domain.",
        (Lang::En, PageCode::DomainNotAllowed) => "This identity provider may not vouch for your email address's domain.",
        (Lang::En, PageCode::InvalidEmail) => "The email address is not valid.",
        (Lang::En, PageCode::MandateRefused) => "This mandate does not allow acting for this usager at this service: it expired, was revoked, does not cover this procedure or does not belong to your organisation.",
        (Lang::En, PageCode::TooManyAttempts) => "Too many sign-in attempts. Try again later.",
        (Lang::En, PageCode::RequestTooLarge) => "The request is too large.",
        (Lang::En, PageCode::ServerError) => "Internal error. Try again later.",
        (Lang::En, PageCode::InvalidRequest) => "The request is not valid.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Lang::negotiate(Some("de en"), None), Lang::En);
        assert_eq!(Lang::negotiate(None, Some("en-GB,en;q=0.9")), Lang::En);
        assert_eq!(Lang::negotiate(Some("de"), Some("de-DE")), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("fr-FR"), Some("en")), Lang::Fr);
    }

    #[test]
    fn every_page_code_has_its_own_text_in_both_languages() {
        for lang in [Lang::Fr, Lang::En] {
            let generic = error_text(lang, PageCode::InvalidRequest);
            for code in PageCode::ALL {
                let text = error_text(lang, code);
                assert!(!text.is_empty(), "{code} has no text");
                if code != PageCode::InvalidRequest {
                    assert_ne!(text, generic, "{code} shows the generic text");
                }
            }
        }
        assert_eq!(PageCode::InteractionExpired.as_str(), "interaction_expired");
    }
}
