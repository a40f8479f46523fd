"""The OpenTelemetry semantic-convention attribute names Railcar writes: the GenAI conventions
(``gen_ai.*``: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/, with the OpenAI-specific
``openai.*`` names), and the general ``service.*`` / ``k8s.*`` / ``server.*`` / ``http.*`` / ``error.*`` ones.

One vocabulary for the codecs (which map each wire API to these names) and the trace recorder and consumer
(:mod:`railcar.streams.schema`), so a name is spelled once.
"""

from __future__ import annotations

ERROR_TYPE = "error.type"
AGENT_ID = "gen_ai.agent.id"
CONVERSATION_ID = "gen_ai.conversation.id"
EMBEDDINGS_DIMENSION_COUNT = "gen_ai.embeddings.dimension.count"
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
REQUEST_ENCODING_FORMATS = "gen_ai.request.encoding_formats"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_K = "gen_ai.request.top_k"
REQUEST_TOP_P = "gen_ai.request.top_p"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
HTTP_STATUS_CODE = "http.response.status_code"
OPENAI_API_TYPE = "openai.api.type"
OPENAI_REQUEST_SERVICE_TIER = "openai.request.service_tier"
OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"
OPENAI_RESPONSE_SYSTEM_FINGERPRINT = "openai.response.system_fingerprint"
SERVICE_NAME = "service.name"
K8S_POD_NAME = "k8s.pod.name"
K8S_NAMESPACE_NAME = "k8s.namespace.name"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

__all__ = ["AGENT_ID", "CONVERSATION_ID", "EMBEDDINGS_DIMENSION_COUNT", "ERROR_TYPE", "HTTP_STATUS_CODE", "K8S_NAMESPACE_NAME", "K8S_POD_NAME", "OPENAI_API_TYPE", "OPENAI_REQUEST_SERVICE_TIER", "OPENAI_RESPONSE_SERVICE_TIER", "OPENAI_RESPONSE_SYSTEM_FINGERPRINT", "OPERATION_NAME", "PROVIDER_NAME", "REQUEST_CHOICE_COUNT", "REQUEST_ENCODING_FORMATS", "REQUEST_FREQUENCY_PENALTY", "REQUEST_MAX_TOKENS", "REQUEST_MODEL", "REQUEST_PRESENCE_PENALTY", "REQUEST_SEED", "REQUEST_STOP_SEQUENCES", "REQUEST_TEMPERATURE", "REQUEST_TOP_K", "REQUEST_TOP_P", "RESPONSE_FINISH_REASONS", "RESPONSE_ID", "RESPONSE_MODEL", "SERVER_ADDRESS", "SERVER_PORT", "SERVICE_NAME", "USAGE_CACHE_CREATION_INPUT_TOKENS", "USAGE_CACHE_READ_INPUT_TOKENS", "USAGE_INPUT_TOKENS", "USAGE_OUTPUT_TOKENS"]
