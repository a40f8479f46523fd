{{/*
Named templates. Those starting with `railcar.sidecar` and `railcar.agentEnv` are public: an agent's chart that
lists this chart as a dependency includes them with a context holding the Railcar values and the release:

  {{- $rc := dict "Values" .Values.railcar "Release" .Release }}
  spec:
    initContainers:                                   # sidecar.native: true (Kubernetes 1.29+)
      {{- include "railcar.sidecar" $rc | nindent 6 }}
    containers:
      - name: agent
        env:
          {{- include "railcar.agentEnv" $rc | nindent 10 }}
    volumes:
      {{- include "railcar.sidecarVolumes" $rc | nindent 6 }}

Inside this chart the root context `.` works the same way.
*/}}

{{- define "railcar.name" -}}
{{- default "railcar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "railcar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "railcar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Resource name with a suffix, kept within the 63-character DNS label limit. */}}
{{- define "railcar.component" -}}
{{- printf "%s-%s" (include "railcar.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "railcar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "railcar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "railcar.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "railcar.labels" -}}
helm.sh/chart: {{ include "railcar.chart" .root }}
{{ include "railcar.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: railcar
{{- end }}

{{- define "railcar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "railcar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "railcar.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* True (non-empty) when the guardrail config comes from a ConfigMap rather than the bundled default. */}}
{{- define "railcar.guardrailsFromConfigMap" -}}
{{- if or .Values.sidecar.guardrails.existingConfigMap .Values.sidecar.guardrails.files }}true{{ end }}
{{- end }}

{{- define "railcar.guardrailsConfigMap" -}}
{{- default (include "railcar.component" (dict "root" . "suffix" "guardrails")) .Values.sidecar.guardrails.existingConfigMap }}
{{- end }}

{{/* The Kafka part of the environment, shared by the sidecar and the consumer. */}}
{{- define "railcar.kafkaEnv" -}}
- name: RAILCAR_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: RAILCAR_KAFKA_TRACE_TOPIC
  value: {{ .Values.kafka.traceTopic | quote }}
- name: RAILCAR_KAFKA_FINDINGS_TOPIC
  value: {{ .Values.kafka.findingsTopic | quote }}
- name: RAILCAR_KAFKA_DEAD_LETTER_TOPIC
  value: {{ .Values.kafka.deadLetterTopic | quote }}
- name: RAILCAR_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl }}
{{- if .mechanism }}
- name: RAILCAR_KAFKA_SASL_MECHANISM
  value: {{ .mechanism | quote }}
- name: RAILCAR_KAFKA_SASL_USERNAME
  value: {{ .username | quote }}
{{- end }}
{{- if .passwordSecret.name }}
- name: RAILCAR_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .passwordSecret.name }}
      key: {{ .passwordSecret.key }}
{{- end }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: RAILCAR_KAFKA_SSL_CAFILE
  value: /etc/railcar/kafka-ca/{{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- end }}

{{/* A loopback HTTP probe run inside the container (the server binds 127.0.0.1). */}}
{{- define "railcar.loopbackProbe" -}}
exec:
  command:
    - python
    - -c
    - "import urllib.request as u; u.urlopen('http://127.0.0.1:{{ .port }}{{ .path }}', timeout=2)"
{{- end }}

{{/*
railcar.sidecar: the sidecar container as one YAML list item. With sidecar.native it carries
restartPolicy: Always and belongs under initContainers; otherwise under containers.
*/}}
{{- define "railcar.sidecar" -}}
{{- $s := .Values.sidecar -}}
- name: {{ $s.name }}
  image: {{ include "railcar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve"]
  {{- if $s.native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: railcar
      containerPort: {{ $s.port }}
      protocol: TCP
  env:
    - name: RAILCAR_SERVER_HOST
      value: "127.0.0.1"
    - name: RAILCAR_SERVER_PORT
      value: {{ $s.port | quote }}
    - name: RAILCAR_UPSTREAM_BASE_URL
      value: {{ $s.upstream.baseUrl | quote }}
    {{- if $s.upstream.apiKeySecret.name }}
    - name: RAILCAR_UPSTREAM_API_KEY_FILE
      value: /var/run/secrets/railcar/upstream/{{ $s.upstream.apiKeySecret.key }}
    {{- end }}
    - name: RAILCAR_GUARDRAILS_CONFIG_PATH
      value: {{ if include "railcar.guardrailsFromConfigMap" . }}/etc/railcar/guardrails{{ else }}default{{ end }}
    - name: RAILCAR_GUARDRAILS_INLINE_ACTION
      value: {{ $s.inlineAction | quote }}
    - name: RAILCAR_TELEMETRY_SPOOL_DIR
      value: /var/lib/railcar/spool
    - name: RAILCAR_TELEMETRY_SPOOL_MAX_BYTES
      value: {{ include "railcar.bytes" $s.spool.sizeLimit | quote }}
    - name: RAILCAR_TELEMETRY_AGENT_ID
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: RAILCAR_TELEMETRY_AGENT_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- include "railcar.kafkaEnv" . | nindent 4 }}
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # Native sidecar: the kubelet starts the agent only after this succeeds, so rails are loaded before its first call.
  startupProbe:
    {{- include "railcar.loopbackProbe" (dict "port" $s.port "path" "/readyz") | nindent 4 }}
    periodSeconds: 1
    timeoutSeconds: 3
    failureThreshold: 120
  readinessProbe:
    {{- include "railcar.loopbackProbe" (dict "port" $s.port "path" "/readyz") | nindent 4 }}
    periodSeconds: {{ $s.readinessPeriodSeconds }}
    timeoutSeconds: 3
    failureThreshold: 3
  livenessProbe:
    {{- include "railcar.loopbackProbe" (dict "port" $s.port "path" "/healthz") | nindent 4 }}
    periodSeconds: 20
    timeoutSeconds: 3
    failureThreshold: 3
  resources:
    {{- toYaml $s.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- if include "railcar.guardrailsFromConfigMap" . }}
    - name: railcar-guardrails
      mountPath: /etc/railcar/guardrails
      readOnly: true
    {{- end }}
    - name: railcar-spool
      mountPath: /var/lib/railcar/spool
    - name: railcar-tmp
      mountPath: /tmp
    {{- if $s.upstream.apiKeySecret.name }}
    - name: railcar-upstream
      mountPath: /var/run/secrets/railcar/upstream
      readOnly: true
    {{- end }}
    {{- if .Values.kafka.tls.caSecret.name }}
    - name: railcar-kafka-ca
      mountPath: /etc/railcar/kafka-ca
      readOnly: true
    {{- end }}
{{- end }}

{{/* railcar.sidecarVolumes: the pod volumes the sidecar mounts, as YAML list items. */}}
{{- define "railcar.sidecarVolumes" -}}
{{- if include "railcar.guardrailsFromConfigMap" . }}
- name: railcar-guardrails
  configMap:
    name: {{ include "railcar.guardrailsConfigMap" . }}
{{- end }}
- name: railcar-spool
  emptyDir:
    sizeLimit: {{ .Values.sidecar.spool.sizeLimit }}
- name: railcar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.sidecar.upstream.apiKeySecret.name }}
- name: railcar-upstream
  secret:
    secretName: {{ .Values.sidecar.upstream.apiKeySecret.name }}
    items:
      - key: {{ .Values.sidecar.upstream.apiKeySecret.key }}
        path: {{ .Values.sidecar.upstream.apiKeySecret.key }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: railcar-kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name }}
{{- end }}
{{- end }}

{{/* railcar.baseUrl: what agents put in OPENAI_BASE_URL. */}}
{{- define "railcar.baseUrl" -}}
{{- printf "http://127.0.0.1:%d/v1" (int .Values.sidecar.port) }}
{{- end }}

{{/* railcar.agentEnv: the environment entry pointing an agent container at the sidecar. */}}
{{- define "railcar.agentEnv" -}}
- name: OPENAI_BASE_URL
  value: {{ include "railcar.baseUrl" . | quote }}
{{- end }}

{{/*
Kubernetes quantity (Ki/Mi/Gi or plain bytes) to bytes, for telemetry.spool_max_bytes. The spool cap is 90 % of
the emptyDir limit so the kubelet never evicts the pod for exceeding it.
*/}}
{{- define "railcar.bytes" -}}
{{- $q := toString . -}}
{{- $n := 0 -}}
{{- if hasSuffix "Gi" $q }}{{ $n = mul (trimSuffix "Gi" $q | int64) 1073741824 }}
{{- else if hasSuffix "Mi" $q }}{{ $n = mul (trimSuffix "Mi" $q | int64) 1048576 }}
{{- else if hasSuffix "Ki" $q }}{{ $n = mul (trimSuffix "Ki" $q | int64) 1024 }}
{{- else }}{{ $n = $q | int64 }}
{{- end -}}
{{- div (mul $n 9) 10 }}
{{- end }}

{{/* Namespaces the sidecar may run in: injection.namespaces or the release namespace. */}}
{{- define "railcar.sidecarNamespaces" -}}
{{- $ns := .Values.injection.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq (concat (list .Release.Namespace) $ns)) }}
{{- end }}
