{{/* Names, labels, image, and the pieces the gateway and worker host pods share. */}}

{{/* The chart's name. */}}
{{- define "dukat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: the prefix of every resource. */}}
{{- define "dukat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "dukat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "dukat.labels" -}}
helm.sh/chart: {{ include "dukat.chart" . }}
{{ include "dukat.selectorLabels" . }}
app.kubernetes.io/version: {{ include "dukat.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dukat
{{- end -}}

{{/* Labels that select the release's pods. */}}
{{- define "dukat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dukat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: `include "dukat.componentLabels" (list $ "gateway")`. */}}
{{- define "dukat.componentLabels" -}}
{{ include "dukat.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Selector labels of one component: `include "dukat.componentSelectorLabels" (list $ "gateway")`. */}}
{{- define "dukat.componentSelectorLabels" -}}
{{ include "dukat.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Component names. The worker host name leaves room for a pod ordinal in a 63-character host name. */}}
{{- define "dukat.gateway.fullname" -}}
{{- printf "%s-gateway" (include "dukat.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dukat.workerHost.fullname" -}}
{{- printf "%s-worker-host" (include "dukat.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service that gives each worker host pod its stable DNS name. */}}
{{- define "dukat.workerHost.headlessName" -}}
{{- include "dukat.workerHost.fullname" . -}}
{{- end -}}

{{/* Container ports: fixed, the Services map them. */}}
{{- define "dukat.gateway.port" -}}8000{{- end -}}
{{- define "dukat.workerHost.port" -}}8100{{- end -}}

{{/* The gateway's DUKAT_WORKER_HOSTS: every worker host pod's stable URL, one per replica. */}}
{{- define "dukat.workerHostURLs" -}}
{{- $replicas := int .Values.workerHost.replicas -}}
{{- if .Values.workerHost.keda.enabled -}}
{{- /* Every host KEDA may start: the ones not running answer nothing and count as down. */ -}}
{{- $replicas = int .Values.workerHost.keda.maxReplicaCount -}}
{{- end -}}
{{- if lt $replicas 1 -}}
{{- fail "workerHost.replicas must be at least 1: a gateway with no worker hosts would start a local one in its own pod" -}}
{{- end -}}
{{- $sts := include "dukat.workerHost.fullname" . -}}
{{- $svc := include "dukat.workerHost.headlessName" . -}}
{{- $port := include "dukat.workerHost.port" . -}}
{{- $urls := list -}}
{{- range $i := until $replicas -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:%s" $sts $i $svc $.Release.Namespace $.Values.clusterDomain $port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The image tag: pinned, the appVersion by default. */}}
{{- define "dukat.imageTag" -}}
{{- $tag := toString (default .Chart.AppVersion .Values.image.tag) -}}
{{- if or (eq $tag "latest") (eq $tag "") -}}
{{- fail "image.tag must be a pinned version, not latest" -}}
{{- end -}}
{{- $tag -}}
{{- end -}}

{{- define "dukat.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "dukat.imageTag" .) -}}
{{- end -}}

{{- define "dukat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dukat.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secrets: the chart's own, or the user's existing one. Empty when there is none. */}}
{{- define "dukat.apiKeysSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if or .Values.auth.apiKeys .Values.auth.adminKeys -}}
{{- printf "%s-api-keys" (include "dukat.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The internal token's Secret: the user's, or the chart's (always: the hosts refuse anyone without it). */}}
{{- define "dukat.internalTokenSecretName" -}}
{{- default (printf "%s-internal-token" (include "dukat.fullname" .)) .Values.internalToken.existingSecret -}}
{{- end -}}

{{/* The chart's internal token: the value given, else the one already in the cluster, else a new one. */}}
{{- define "dukat.internalToken" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "dukat.internalTokenSecretName" .) -}}
{{- if .Values.internalToken.value -}}
{{- .Values.internalToken.value -}}
{{- else if and $existing $existing.data (hasKey $existing.data .Values.internalToken.secretKey) -}}
{{- index $existing.data .Values.internalToken.secretKey | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}

{{/* DUKAT_INTERNAL_TOKEN from its Secret, for the gateway and the worker hosts. */}}
{{- define "dukat.internalTokenEnv" -}}
- name: DUKAT_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "dukat.internalTokenSecretName" . }}
      key: {{ .Values.internalToken.secretKey }}
{{- end -}}

{{- define "dukat.hfTokenSecretName" -}}
{{- if .Values.huggingface.existingSecret -}}
{{- .Values.huggingface.existingSecret -}}
{{- else if .Values.huggingface.token -}}
{{- printf "%s-hf-token" (include "dukat.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "dukat.claimName" -}}
{{- default (printf "%s-models" (include "dukat.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "dukat.configMapName" -}}
{{- printf "%s-model-config" (include "dukat.fullname" .) -}}
{{- end -}}

{{/* Pod-level settings both components share. */}}
{{- define "dukat.podCommon" -}}
serviceAccountName: {{ include "dukat.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Volumes both components mount: the models claim and a scratch /tmp. */}}
{{- define "dukat.volumes" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "dukat.claimName" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "dukat.volumeMounts" -}}
- name: models
  mountPath: {{ .Values.models.dir }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Environment both components share. */}}
{{- define "dukat.commonEnv" -}}
- name: DUKAT_MODELS_DIR
  value: {{ .Values.models.dir | quote }}
- name: DUKAT_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: HOME
  value: /tmp
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/* A secret as an env var: `include "dukat.secretEnv" (list "NAME" secretName key)`; nothing when
the secret name is empty. Secrets are referenced, never written into the pod spec. */}}
{{- define "dukat.secretEnv" -}}
{{- if index . 1 }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 }}
      key: {{ index . 2 }}
{{- end }}
{{- end -}}

{{/* A values map of extra env: `include "dukat.extraEnv" (list .Values.gateway.env "gateway.env")`.
Names the chart sets itself, and secrets, are refused. */}}
{{- define "dukat.extraEnv" -}}
{{- $reserved := list "DUKAT_API_KEYS" "DUKAT_ADMIN_KEYS" "DUKAT_INTERNAL_TOKEN" "HF_TOKEN" "DUKAT_WORKER_HOSTS" "DUKAT_MODELS_DIR" "DUKAT_CONFIG_PATH"
  "DUKAT_HOST" "DUKAT_PORT" "DUKAT_HOST_BIND" "DUKAT_HOST_PORT" "DUKAT_DEVICES" "DUKAT_SHUTDOWN_TIMEOUT_S" -}}
{{- range $name, $value := index . 0 }}
{{- if has $name $reserved }}
{{- fail (printf "%s.%s is set by the chart (secrets through auth and huggingface)" (index $ 1) $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The three probes: `include "dukat.probes" (list .Values.gateway.probes startupPath livenessPath readinessPath)`. */}}
{{- define "dukat.probes" -}}
{{- $probes := index . 0 -}}
startupProbe:
  httpGet:
    path: {{ index . 1 }}
    port: http
  {{- toYaml $probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: {{ index . 2 }}
    port: http
  {{- toYaml $probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: {{ index . 3 }}
    port: http
  {{- toYaml $probes.readiness | nindent 2 }}
{{- end -}}

{{/* The worker host's resources with its GPUs (`gpu.count` > 0) added to the limits. */}}
{{- define "dukat.workerHost.resources" -}}
{{- $resources := deepCopy (.Values.workerHost.resources | default dict) -}}
{{- $gpus := int .Values.workerHost.gpu.count -}}
{{- if gt $gpus 0 -}}
{{- $limits := deepCopy ($resources.limits | default dict) -}}
{{- $_ := set $limits .Values.workerHost.gpu.resourceName $gpus -}}
{{- $_ = set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Checksum of the chart's Secrets: pods roll when a key or token changes. */}}
{{- define "dukat.secretsChecksum" -}}
{{- include (print .Template.BasePath "/secrets.yaml") . | sha256sum -}}
{{- end -}}
