{{/* The release's base name: the release name when it contains the chart name. */}}
{{- define "stagetime.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "server"). */}}
{{- define "stagetime.labels" -}}
app.kubernetes.io/name: {{ include "stagetime.fullname" .root }}-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: stagetime
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "stagetime.selector" -}}
app.kubernetes.io/name: {{ include "stagetime.fullname" .root }}-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "stagetime.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The namespaces of the PipelineRuns (default: the release's). */}}
{{/* Every namespace of PipelineRuns: the default one first, then the rest
of rbac.pipelineRunNamespaces and the namespaces of tekton.repoNamespaces. */}}
{{- define "stagetime.pipelineRunNamespaces" -}}
{{- $list := .Values.rbac.pipelineRunNamespaces | default (list .Release.Namespace) -}}
{{- range $repo, $ns := .Values.tekton.repoNamespaces -}}
{{- $list = append $list $ns -}}
{{- end -}}
{{- toJson (uniq $list) -}}
{{- end -}}

{{- define "stagetime.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "stagetime.fullname" .)) -}}
{{- end -}}

{{/* The CA Secret and key clients trust for rediss:// ("" when none). */}}
{{- define "stagetime.redisCaSecret" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- if .Values.redis.bundled.tls.enabled -}}{{ .Values.redis.bundled.tls.existingSecret }}{{- end -}}
{{- else -}}
{{- .Values.redis.external.caSecret -}}
{{- end -}}
{{- end -}}

{{- define "stagetime.redisCaKey" -}}
{{- if .Values.redis.bundled.enabled -}}ca.crt{{- else -}}{{ .Values.redis.external.caKey }}{{- end -}}
{{- end -}}

{{/* Pod-level security context of the stagetime pods (restricted Pod Security Standard). */}}
{{- define "stagetime.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context (restricted Pod Security Standard). */}}
{{- define "stagetime.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment every component shares: Redis, log format. The bundled
Redis's URL is composed from its password (Kubernetes expands $(VAR) from
the variables before it), so the password may come from any Secret. */}}
{{- define "stagetime.commonEnv" -}}
{{- $fullname := include "stagetime.fullname" . -}}
{{- if .Values.redis.bundled.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.bundled.auth.existingSecret | default (printf "%s-redis" $fullname) }}
      key: {{ ternary .Values.redis.bundled.auth.existingSecretKey "password" (ne .Values.redis.bundled.auth.existingSecret "") }}
- name: REDIS_URL
  value: {{ printf "%s://:$(REDIS_PASSWORD)@%s-redis.%s.svc:6379/0" (ternary "rediss" "redis" .Values.redis.bundled.tls.enabled) $fullname .Release.Namespace | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret | default (printf "%s-redis" $fullname) }}
      key: {{ ternary .Values.redis.external.existingSecretKey "url" (ne .Values.redis.external.existingSecret "") }}
{{- end }}
- name: STAGETIME_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
- name: STAGETIME_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- if include "stagetime.redisCaSecret" . }}
# rustls-native-certs reads the roots for rediss:// from here.
- name: SSL_CERT_FILE
  value: /var/run/stagetime/redis-ca/{{ include "stagetime.redisCaKey" . }}
{{- end }}
{{- end -}}

{{- define "stagetime.redisCaVolumeMount" -}}
{{- if include "stagetime.redisCaSecret" . }}
- name: redis-ca
  mountPath: /var/run/stagetime/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "stagetime.redisCaVolume" -}}
{{- if include "stagetime.redisCaSecret" . }}
- name: redis-ca
  secret:
    secretName: {{ include "stagetime.redisCaSecret" . }}
    items:
      - key: {{ include "stagetime.redisCaKey" . }}
        path: {{ include "stagetime.redisCaKey" . }}
{{- end }}
{{- end -}}

{{/* Probes and the metrics port, the same for the three components. */}}
{{- define "stagetime.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* nodeSelector, tolerations, affinity, imagePullSecrets of a pod; call with (dict "root" $ "c" .Values.server). */}}
{{- define "stagetime.scheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
