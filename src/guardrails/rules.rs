//! The built-in prompt-injection rule set behind `InjectionDetector::default_rules`.
//!
//! Patterns are written for normalised text (lowercase, single spaces, confusables mapped). Weights
//! are tuned against `DEFAULT_THRESHOLD` (10): a rule of weight 10 is enough on its own ("ignore
//! previous instructions", "reveal your system prompt"); weaker signals ("from now on", "no
//! restrictions", "system:") must add up. `(?:\S+ ){0,N}` stands for "up to N words in between".
//! Ids are stable: they appear in logs and metric labels.

use super::input::{Rule, RulePattern};

/// Verbs that throw away earlier instructions.
const OVERRIDE_VERBS: &str = "(?:ignore|ignoring|ignored|disregard|disregarding|forget|forgetting|override|overriding|bypass|bypassing|skip|skipping|discard|abandon|drop|neglect|set aside|throw out)";
/// Things an attacker wants thrown away.
const INSTRUCTION_NOUNS: &str = "(?:instructions?|instruction sets?|directives?|guidelines|rules|prompts?|programming|guardrails|restrictions|constraints|policies|policy|commands|orders|context)";
/// Words that make an instruction noun refer to the model's own configuration.
const QUALIFIERS: &str = "(?:previous|previously|prior|preceding|above|earlier|former|initial|original|old|all|any|every|your|system|developer|operator|safety|these|those|other|existing|current|default|built-in|given|programmed|internal)";
/// Nouns that are the model's configuration by themselves.
const STRONG_NOUNS: &str = "(?:content polic(?:y|ies)|safety (?:rules|protocols?|guidelines|filters?|checks|measures|restrictions|settings|policy|policies|training)|system prompt|system instructions|developer (?:instructions|message)|ethical guidelines|guardrails)";
/// Verbs asking to see something.
const REVEAL_VERBS: &str = "(?:reveal|show|print|output|display|repeat|dump|leak|disclose|reproduce|spell check|tell me|give me|share|expose|return|write out|list|recite|paste|copy)(?:s|ing|ed)?";
/// What an extraction attack wants to see.
const SECRET_CONFIG: &str = "(?:system prompt|system message|system instructions|initial (?:prompt|instructions)|original (?:prompt|instructions)|hidden (?:prompt|instructions)|secret (?:prompt|instructions)|(?:previous|prior|above|preceding) instructions|your (?:instructions|prompt|rules|guidelines|configuration|directives)|instructions you (?:were|have been) given|developer (?:message|instructions|prompt)|internal (?:configuration|instructions|rules|prompt)|confidential (?:instructions|data|information)|pre-?prompt|meta-?prompt|operating instructions)";

fn phrase(id: &str, text: &str, weight: u32) -> Rule {
    Rule {
        id: id.to_string(),
        pattern: RulePattern::Phrase(text.to_string()),
        weight,
    }
}

fn regex(id: &str, pattern: &str, weight: u32) -> Rule {
    Rule {
        id: id.to_string(),
        // ASCII word boundaries keep the whole set on the lazy DFA for non-ASCII text too.
        pattern: RulePattern::Regex(pattern.replace(r"\b", r"(?-u:\b)")),
        weight,
    }
}

/// The default rules; see the module docs for the weighting scheme.
pub(crate) fn default_rules() -> Vec<Rule> {
    let v = OVERRIDE_VERBS;
    let n = INSTRUCTION_NOUNS;
    let q = QUALIFIERS;
    let s = STRONG_NOUNS;
    let rv = REVEAL_VERBS;
    let sc = SECRET_CONFIG;
    vec![
        // --- instruction override -------------------------------------------------------------
        regex(
            "override_previous_instructions",
            &format!(r"\b{v} (?:\S+ ){{0,3}}?(?:{q} (?:\S+ ){{0,2}}?{n}\b|{s})"),
            10,
        ),
        regex(
            "override_instructions_generic",
            &format!(r"\b{v} (?:\S+ ){{0,3}}{n}\b"),
            5,
        ),
        regex(
            "override_everything_above",
            &format!(
                r"\b{v} (?:all |everything |anything |what )?(?:above|before this|(?:you (?:were|have been) told)|we (?:discussed|talked about)|said (?:before|above|earlier)|previously said)"
            ),
            10,
        ),
        regex(
            "forget_everything",
            r"\bforget (?:about )?(?:everything|all of (?:that|this)|all that)\b",
            6,
        ),
        regex(
            "ignore_the_user",
            r"\b(?:ignore|disregard) (?:the|your) user(?:'s)?\b",
            6,
        ),
        regex(
            "new_instructions",
            r"\b(?:new|updated|real|actual|true|revised|replacement) (?:instructions?|directives?|rules|system prompt|task|orders|objective|guidelines)\b\s?:?",
            6,
        ),
        regex(
            "supersedes_prior",
            r"\b(?:supersedes?|overrides?|replaces?|takes? precedence over|cancels?) (?:\S+ ){0,2}(?:prior|previous|earlier|other|all|any|existing|above|original)\b",
            6,
        ),
        regex(
            "rules_changed",
            r"\b(?:your|the|all) (?:rules|instructions|guidelines|polic(?:y|ies)|directives|restrictions) (?:have|has) (?:been )?(?:changed|updated|removed|lifted|revoked|suspended|disabled)",
            8,
        ),
        regex(
            "safety_disabled",
            r"\b(?:safety|content|security) (?:protocols?|filters?|rules|guidelines|guardrails|checks|restrictions|measures|policy|policies|mode) (?:are |is |have been |has been |now )?(?:disabled|off|removed|turned off|lifted|deactivated|suspended|bypassed)\b",
            10,
        ),
        regex(
            "disable_safety",
            r"\b(?:disable|deactivate|turn off|remove|bypass|lift|switch off) (?:\S+ ){0,2}(?:safety|content|moderation|ethical) (?:\S+ )?(?:protocols?|filters?|rules|guidelines|guardrails|checks|restrictions|measures|polic(?:y|ies)|mode)",
            10,
        ),
        regex(
            "guidelines_do_not_apply",
            r"\b(?:safety|security|content|ethical)(?: \S+)? (?:guidelines|rules|polic(?:y|ies)|restrictions|checks)(?: \S+){0,3} (?:do not|don't|does not|doesn't|did not|were not|are not|aren't|no longer|never) (?:apply|applied|meant|matter|relevant|binding)",
            6,
        ),
        regex(
            "exempt_from_rules",
            r"\bexempt(?:ed)? from (?:\S+ ){0,2}(?:restrictions|rules|guidelines|polic(?:y|ies)|safety|filters?|moderation)",
            8,
        ),
        regex(
            "skip_confirmations",
            r"\b(?:skip|bypass|without) (?:\S+ ){0,2}(?:safety checks|confirmations?|approvals?|human review)",
            4,
        ),
        regex(
            "permission_granted",
            r"\b(?:user|you|i) (?:has|have) (?:been )?(?:granted|given) (?:\S+ ){0,2}(?:permission|authori[sz]ation|clearance|admin)",
            4,
        ),
        phrase("stop_everything", "stop everything", 4),
        phrase("from_now_on", "from now on", 4),
        phrase("from_this_point", "from this point", 4),
        phrase("hereby_instructed", "you are hereby instructed", 5),
        // --- system-prompt extraction ---------------------------------------------------------
        regex(
            "extract_system_prompt",
            &format!(r"\b{rv} (?:\S+ ){{0,4}}?{sc}"),
            10,
        ),
        regex(
            "repeat_text_above",
            r"\b(?:repeat|print|output|copy|reproduce|echo|recite|summari[sz]e|translate) (?:\S+ ){0,4}(?:above|before this|preceding|prior to this)\b",
            6,
        ),
        regex(
            r"starts_with_you_are",
            r#"\bstart(?:ing|s)? with (?:the words )?["'“‘]?you are\b"#,
            6,
        ),
        regex(
            "what_was_written_above",
            r"\bwhat (?:was|is) (?:written|said|stated) (?:above|before)\b",
            5,
        ),
        regex(
            "hidden_prompt",
            r"\b(?:hidden|secret|confidential) (?:prompt|instructions|system message)\b",
            6,
        ),
        regex(
            "verbatim",
            r"\b(?:verbatim|word for word|word-for-word|character for character)\b",
            3,
        ),
        regex(
            "context_window_dump",
            r"\b(?:everything|all) (?:\S+ ){0,2}(?:context window|conversation history|memory)\b",
            5,
        ),
        regex(
            "system_message_mention",
            r"\b(?:system|developer) (?:message|messages|prompt)\b",
            3,
        ),
        // --- persona jailbreaks ---------------------------------------------------------------
        regex(
            "dan_jailbreak",
            r"\b(?:do anything now|you are (?:now )?dan\b|dan mode|(?:act|acting|pretend) as dan\b|stay in character as dan)",
            10,
        ),
        regex(
            "developer_mode",
            r"\b(?:developer|dev|god|jailbreak|jailbroken|unrestricted|unfiltered|debug|admin|sudo|maintenance) mode\b",
            6,
        ),
        regex(
            "enable_special_mode",
            r"\b(?:enable|enabled|activate|activated|enter|entering|switch to|you are (?:now )?in|now in) (?:\S+ )?(?:developer|dev|god|jailbreak|unrestricted|unfiltered|sudo) mode\b",
            10,
        ),
        regex(
            "no_restrictions",
            r"\b(?:no|without|free of|free from|zero|any|beyond) (?:\S+ ){0,2}(?:restrictions|limits|limitations|filters?|filtering|censorship|boundaries|content polic(?:y|ies)|ethical guidelines|safety guidelines|moral(?:s|ity)?|ethics)\b",
            5,
        ),
        regex(
            "no_rules",
            r"\b(?:no|without|zero) (?:\S+ )?(?:rules|guidelines)\b",
            4,
        ),
        regex(
            "unrestricted",
            r"\b(?:unrestricted|uncensored|unfiltered|unaligned|unshackled|jailbroken|amoral|unmoderated)\b",
            6,
        ),
        regex(
            "ai_without_rules",
            r"\b(?:ai|assistant|model|chatbot|bot|llm|version of (?:you|yourself))(?: \S+){0,2} (?:with|that has|having|without) (?:no |any )?(?:\S+ )?(?:rules|restrictions|limits|limitations|filters?|content polic(?:y|ies)|guidelines|ethics|morals)",
            8,
        ),
        regex(
            "as_if_no_rules",
            r"\bas if (?:you|there) (?:have|had|were|are) no\b",
            6,
        ),
        regex(
            "you_are_now",
            r"\byou (?:are|will be|'re) (?:now|no longer)\b",
            4,
        ),
        regex(
            "pretend_to_be",
            r"\b(?:pretend|imagine) (?:that )?(?:you are|you're|to be)\b",
            3,
        ),
        regex(
            "act_as_ai",
            r"\bact as (?:an? )?(?:\S+ )?(?:ai|model|assistant|chatbot|llm)\b",
            2,
        ),
        regex(
            "comply_with_everything",
            r"\b(?:comply|obey) (?:\S+ ){0,2}(?:every|all|any) (?:\S+ )?(?:requests?|commands?|instructions|questions?)\b",
            5,
        ),
        regex(
            "answer_anything",
            r"\b(?:answer|respond to|do) (?:any|every|all|anything)(?: \S+){0,2} (?:without|regardless|no matter)\b",
            5,
        ),
        regex("do_anything", r"\b(?:do|say) anything\b", 4),
        regex(
            "comply_fully",
            r"\b(?:comply fully|fully comply|without (?:any )?(?:question|hesitation|refusal)|never refuse|must not refuse|cannot refuse|can't refuse)\b",
            5,
        ),
        regex("jailbreak_word", r"\bjailbreak(?:s|ing)?\b", 3),
        regex(
            "self_authorized_reasoning",
            r"\b(?:i have|i've) (?:already )?(?:verified|determined|concluded|reasoned|established)\b",
            4,
        ),
        regex(
            "restricted_content",
            r"\b(?:restricted|forbidden|prohibited|disallowed) (?:content|information|answer|response)\b",
            4,
        ),
        // --- fake delimiters and role turns ---------------------------------------------------
        regex(
            "chat_template_tokens",
            r"(?:<\|im_start\|>|<\|im_end\|>|<\|system\|>|<\|endoftext\|>|<\|begin_of_text\|>|<\|start_header_id\|>|<\|eot_id\|>|\[/?inst\]|<</?sys>>|<\|assistant\|>|<\|user\|>)",
            10,
        ),
        regex(
            "end_of_input_marker",
            r"\bend of (?:the )?(?:user )?(?:input|document|prompt|context|instructions|conversation|message|data)\b",
            6,
        ),
        regex(
            "fake_system_turn",
            r"(?:^|[\s\-#\]>|:]|\[)(?:system|admin|root|developer|sudo)\s?(?:\]|:|>)",
            4,
        ),
        regex(
            "fake_system_header",
            r"\b(?:system|admin|developer|important|urgent|security|critical)(?: system)? (?:note|notice|update|override|alert|message|instruction|directive|command)\b",
            4,
        ),
        regex(
            "override_keyword",
            r"(?:^|\s)(?:override|admin override|system override)\s?:",
            5,
        ),
        regex(
            "fake_assistant_turn",
            r"(?:^|\s)assistant: (?:sure|of course|certainly|absolutely|okay|ok)\b",
            8,
        ),
        regex(
            "admin_password",
            r"\b(?:admin|root|master) (?:password|credentials)\b",
            3,
        ),
        regex(
            "thinking_tags",
            r"</?(?:thinking|reasoning|scratchpad)>|\breasoning trace\b",
            3,
        ),
        // --- instructions aimed at agents inside documents (indirect injection) ----------------
        regex(
            "address_the_ai",
            r"\b(?:(?:note|message|instructions?) (?:to|for) (?:the |any |all )?(?:ai|bot|assistant|model|llm|agent|chatbot)s?|(?:ai|llm) (?:agents?|assistants?|models?|systems?|bots?)(?: \S+){0,3} (?:should|must|need to|reading this|processing this|reviewing this)|(?:if|when) you are an? (?:ai|llm|language model|assistant|agent)|(?:to|for) (?:any|all) (?:ai|llm)s? (?:\S+ )?(?:reading|processing|reviewing|summari[sz]ing)|(?:ai|llm|chatbot) (?:assistant|agent|model|system)? ?reading this|important for the (?:assistant|ai|model|bot|agent))",
            6,
        ),
        regex(
            "before_you_reply",
            r"\bbefore (?:you (?:reply|respond|answer|continue|proceed)|responding|answering|replying|continuing)\b",
            4,
        ),
        regex(
            "dangerous_tool_call",
            r"\b(?:call|invoke|trigger|use|run|execute) (?:the )?(?:delete_file|delete_files|remove_file|send_email|send_mail|http_post|http_get|http_request|execute_command|run_command|run_shell|shell_exec|exec_command|write_file|transfer_funds|make_payment|fetch_url)\b",
            6,
        ),
        regex(
            "send_to_address",
            r"\b(?:send|email|e-mail|mail|forward|post|upload|exfiltrate|transmit|leak|copy|envoie|envoyez|sende|schicke|envía|invia)(?:s|ing|-les|-le)? (?:\S+ ){0,6}(?:(?:to|at|a|à|an|al|ad) (?:\S+ ){0,3}(?:\S+@\S+\.\S+|https?://)|externally|to an external|outside the company)",
            6,
        ),
        regex(
            "sensitive_data",
            r"\b(?:api keys?|credentials|passwords?|customer (?:list|data|database|emails|records)|full customer|environment variables|secrets|private keys?|access tokens?|order data|internal (?:data|configuration)|interne(?:n)? daten|donn(?:é|e)es clients|raw customer)\b",
            4,
        ),
        regex(
            "destroy_data",
            r"\b(?:empty|delete|wipe|erase|remove|purge|drop|clear) (?:\S+ ){0,3}(?:directory|directories|folder|files?|database|db|records|tables?|repository|backups?|logs?)\b",
            4,
        ),
        regex(
            "append_to_every_reply",
            r"\b(?:append|add|include|insert|prepend|attach)(?:s|ed|ing)? (?:\S+ ){0,6}?(?:(?:to|at) the (?:end|start|beginning) of|in|to) (?:your|every|each|any|all) (?:\S+ ){0,2}?(?:reply|replies|response|responses|summary|summaries|review|answer|answers|output|report|reports|message|messages)\b",
            6,
        ),
        regex(
            "in_every_reply",
            r"\b(?:in|to|into) (?:every|each|all) (?:future )?(?:reply|replies|response|responses|summary|summaries|answer|answers|output|report|reports|message|messages)\b",
            4,
        ),
        regex(
            "marker_token",
            r"\b(?:verification|confirmation|tracking|logging|reference|session|protocol|registration|log|trace) (?:code|token|id|string|marker)\b",
            4,
        ),
        regex(
            "exact_token",
            r"\b(?:the exact|this exact|the following) (?:token|string|code|phrase|marker)\b",
            4,
        ),
        regex(
            "persist_to_memory",
            r"\b(?:save|store|write|persist|add|remember)(?: \S+){0,4} (?:to|in|into) (?:your )?(?:long-term |persistent |permanent )?memory\b|\bremember (?:this )?for (?:all )?future\b|\bso it persists\b|\(persisted\)",
            6,
        ),
        regex(
            "must_include",
            r"\byou must (?:include|append|add|mention|output)\b",
            4,
        ),
        regex(
            "real_task",
            r"\byour (?:real|actual|true|new) (?:task|job|goal|purpose|objective|instruction)\b",
            6,
        ),
        regex(
            "compromised_messages",
            r"\b(?:are|is|were|been) compromised\b",
            4,
        ),
        regex(
            "follow_only_user",
            r"\bfollow only (?:the )?(?:user|my|these|this)\b",
            6,
        ),
        // --- encoded payloads -----------------------------------------------------------------
        regex(
            "decode_and_follow",
            r"\b(?:decode|decoding|decipher|deobfuscate|unscramble|translate|convert|reverse|read)(?: \S+){0,6} (?:and|then|,)(?: \S+){0,3} (?:follow|obey|execute|carry out|act on|run it|do (?:exactly )?(?:what|as) it says|do what it says|perform)\b",
            10,
        ),
        regex(
            "do_what_it_says",
            r"\bdo (?:exactly )?(?:what|as) (?:it|they|the text|the message) (?:says|say|instructs|tells you)\b",
            6,
        ),
        regex(
            "follow_hidden_instruction",
            r"\bfollow (?:the )?(?:instructions?|commands?) (?:inside|in it|encoded|hidden|it contains)\b",
            6,
        ),
        regex(
            "execute_as_command",
            r"\bexecute (?:it|this|that) as (?:a )?(?:command|instruction|code)\b",
            6,
        ),
        // --- other languages ------------------------------------------------------------------
        regex(
            "de_override",
            r"\b(?:ignoriere|ignorier|vergiss|vergesse|missachte|überspringe|umgehe) (?:\S+ ){0,3}(?:anweisungen|regeln|richtlinien|instruktionen|vorgaben|befehle|systemanweisungen)\b",
            10,
        ),
        regex("de_forget_all", r"\bvergiss (?:alles|alle)\b", 6),
        regex(
            "de_extract",
            r"\b(?:verrate|zeige|zeig|gib|nenne|wiederhole)(?: \S+){0,3} (?:system-?prompt|systemanweisungen|system-?anweisungen|systemnachricht|anweisungen|instruktionen)\b",
            10,
        ),
        regex(
            "de_no_limits",
            r"\b(?:uneingeschränkt|uneingeschraenkt|ohne (?:jegliche )?(?:einschränkungen|einschraenkungen|regeln|filter|grenzen))\b",
            5,
        ),
        regex(
            "de_no_rules",
            r"\bkeine (?:regeln|richtlinien|einschränkungen|einschraenkungen|grenzen|filter)\b",
            5,
        ),
        regex("de_from_now", r"\bab (?:jetzt|sofort)\b", 3),
        regex("de_you_are_now", r"\bdu bist (?:jetzt|nun|ab sofort)\b", 4),
        regex(
            "de_guidelines_void",
            r"\bsicherheitsrichtlinien(?: \S+){0,2} nicht (?:gelten|anwendbar)|\brichtlinien (?:gelten )?nicht\b",
            6,
        ),
        regex("de_new_instructions", r"\bneue anweisungen\b", 6),
        regex(
            "fr_override",
            r"\b(?:ignorez|ignore|ignorer|oubliez|oublie|oublier|négligez|negligez) (?:\S+ ){0,3}(?:instructions|consignes|règles|regles|directives)\b",
            10,
        ),
        regex(
            "fr_extract",
            r"\b(?:révèle|révélez|revele|revelez|révéler|reveler|montre|montrez|affiche|affichez|donne|donnez|répète|repete)(?:-moi)?(?: \S+){0,3} (?:(?:ton|votre|tes|vos|le|les) )?(?:prompt|instructions|consignes)(?: syst(?:è|e)me)?\b",
            10,
        ),
        regex(
            "fr_no_limits",
            r"\bsans (?:aucune )?(?:restrictions?|limites?|filtres?|règles|regles|censure)\b",
            5,
        ),
        regex(
            "fr_rules_void",
            r"\b(?:règles|regles) de (?:sécurité|securite) ne s'appliquent pas\b",
            6,
        ),
        regex(
            "es_override",
            r"\b(?:ignora|ignore|ignorar|olvida|olvide|olvidar|omite|omita) (?:\S+ ){0,3}(?:instrucciones|reglas|directrices|indicaciones)\b",
            10,
        ),
        regex(
            "es_extract",
            r"\b(?:revela|revele|muestra|muestre|muéstrame|dime|repite)(?: \S+){0,3} (?:instrucciones|prompt)(?: del sistema| de sistema)?\b",
            10,
        ),
        regex(
            "es_no_limits",
            r"\bsin (?:ninguna )?(?:restricciones|límites|limites|filtros?|reglas|censura)\b",
            5,
        ),
        regex(
            "es_dev_mode",
            r"\bmodo (?:desarrollador|dios|sin restricciones|jailbreak)\b",
            6,
        ),
        regex(
            "es_rules_void",
            r"\breglas de seguridad no (?:aplican|se aplican)\b",
            6,
        ),
        regex(
            "it_override",
            r"\b(?:ignora|ignorare|dimentica|dimenticare|trascura) (?:\S+ ){0,3}(?:istruzioni|regole|direttive|indicazioni)\b",
            10,
        ),
        regex(
            "it_extract",
            r"\b(?:rivela|rivelami|mostra|mostrami|dimmi|ripeti)(?: \S+){0,3} (?:istruzioni|prompt)(?: di sistema| del sistema)?\b",
            10,
        ),
        regex(
            "it_no_limits",
            r"\bsenza (?:alcuna )?(?:restrizioni|limiti|filtri|regole|censura)\b",
            5,
        ),
        regex(
            "it_guidelines_void",
            r"\blinee guida(?: \S+){0,3} non (?:valgono|si applicano)\b",
            6,
        ),
        regex(
            "system_note_multilingual",
            r"\b(?:nota (?:di|del) sistema|systemhinweis|note syst(?:è|e)me|nota del sistema)\b",
            4,
        ),
        regex(
            "every_reply_multilingual",
            r"\b(?:alla fine di ogni risposta|am ende jeder antwort|(?:à|a) la fin de (?:toute|chaque) r(?:é|e)ponse|al final de (?:cualquier|cada) respuesta)\b",
            6,
        ),
    ]
}
