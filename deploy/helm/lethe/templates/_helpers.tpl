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
