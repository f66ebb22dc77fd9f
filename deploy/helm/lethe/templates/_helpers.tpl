{{/* The chart name, or nameOverride. */}}
{{- define "lethe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or "<release>-<name>" (just the release when
it already contains the name). 63 characters at most (DNS label).
*/}}
{{- define "lethe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lethe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "lethe.labels" -}}
helm.sh/chart: {{ include "lethe.chart" . }}
{{ include "lethe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lethe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The release's selector labels; a component adds app.kubernetes.io/component. */}}
{{- define "lethe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lethe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lethe.server.fullname" -}}
{{- printf "%s-server" (include "lethe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lethe.operator.fullname" -}}
{{- printf "%s-operator" (include "lethe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lethe.server.selectorLabels" -}}
{{ include "lethe.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "lethe.operator.selectorLabels" -}}
{{ include "lethe.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lethe.server.labels" -}}
{{ include "lethe.labels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "lethe.operator.labels" -}}
{{ include "lethe.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lethe.server.serviceAccountName" -}}
{{- default (include "lethe.server.fullname" .) .Values.server.serviceAccount.name }}
{{- end }}

{{- define "lethe.operator.serviceAccountName" -}}
{{- default (include "lethe.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* The token subject of the operator's ServiceAccount, always a platform principal. */}}
{{- define "lethe.operator.principal" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "lethe.operator.serviceAccountName" .) }}
{{- end }}

{{- define "lethe.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "lethe.configMapName" -}}
{{- printf "%s-config" (include "lethe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lethe.createdSecretName" -}}
{{- printf "%s-secrets" (include "lethe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where one secret setting comes from, as "name/key", or "" when it is not set. Arguments: a dict
with root (the chart's context), item (database, nats, artifactKey or hashKey) and created (the
createSecret key holding its value). The chart-created Secret wins when it holds a value.
*/}}
{{- define "lethe.secretRef" -}}
{{- $v := .root.Values }}
{{- if and $v.createSecret.enabled (get $v.createSecret .created) }}
{{- printf "%s/%s" (include "lethe.createdSecretName" .root) .created }}
{{- else }}
{{- $item := get $v .item }}
{{- if $item.existingSecret }}
{{- printf "%s/%s" $item.existingSecret $item.key }}
{{- end }}
{{- end }}
{{- end }}

{{/* One env entry from a secret setting; nothing when it is not set. Same arguments plus env. */}}
{{- define "lethe.secretEnv" -}}
{{- $ref := include "lethe.secretRef" . }}
{{- if $ref }}
{{- $parts := splitList "/" $ref }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ index $parts 0 }}
      key: {{ index $parts 1 }}
{{- end }}
{{- end }}

{{/* A preferred spread across nodes, unless the user gave an affinity. Arguments: root, component, affinity. */}}
{{- define "lethe.affinity" -}}
{{- if .affinity }}
{{- toYaml .affinity }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "lethe.selectorLabels" .root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* The checksum of the ConfigMap: a change of the data map or of the services rolls the pods. */}}
{{- define "lethe.configChecksum" -}}
{{- include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* The operator's rules, exactly what the reconciler uses: read requests, write their status, record events. */}}
{{- define "lethe.operator.rules" -}}
- apiGroups: ["privacy.lethe.dev"]
  resources: ["privacyrequests"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["privacy.lethe.dev"]
  resources: ["privacyrequests/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* TLS: the Secret of the server's certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "lethe.tls.serverSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "lethe.server.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* TLS: the Secret whose ca.crt client certificates must chain to (mutual TLS). */}}
{{- define "lethe.tls.clientCaSecret" -}}
{{- default (include "lethe.tls.serverSecret" .) .Values.tls.mutual.clientCaSecret }}
{{- end }}

{{/* TLS: the Secret of the operator's client certificate (mutual TLS). */}}
{{- define "lethe.tls.operatorSecret" -}}
{{- if .Values.tls.mutual.operatorSecret }}
{{- .Values.tls.mutual.operatorSecret }}
{{- else }}
{{- printf "%s-tls" (include "lethe.operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* TLS: the values checked once, with a message saying what to set. */}}
{{- define "lethe.tls.validate" -}}
{{- $t := .Values.tls }}
{{- if $t.enabled }}
{{- if and $t.certManager.enabled (not $t.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name is required with tls.certManager.enabled: the Issuer or ClusterIssuer that signs the server's certificate" }}
{{- end }}
{{- if and (not $t.certManager.enabled) (not $t.existingSecret) }}
{{- fail "TLS is on by default and needs a certificate: set tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt), or tls.certManager.enabled=true with tls.certManager.issuerRef.name; tls.enabled=false serves plaintext (for trying out only)" }}
{{- end }}
{{- if and $t.mutual.enabled .Values.operator.enabled (not $t.certManager.enabled) (not $t.mutual.operatorSecret) }}
{{- fail "tls.mutual.operatorSecret is required with tls.mutual.enabled (the operator's client certificate: tls.crt, tls.key), unless tls.certManager.enabled issues one" }}
{{- end }}
{{- if eq (int $t.healthPort) (int .Values.server.port) }}
{{- fail (printf "tls.healthPort (%v) must differ from server.port, the gRPC port" $t.healthPort) }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int $t.healthPort) (int .Values.metrics.port)) }}
{{- fail (printf "tls.healthPort (%v) must differ from metrics.port" $t.healthPort) }}
{{- end }}
{{- else if $t.mutual.enabled }}
{{- fail "tls.mutual.enabled needs tls.enabled" }}
{{- end }}
{{- end }}
