{{/* Labels every object carries; selectors use only name + component, which never change. */}}
{{- define "csi-iscsi.labels" -}}
app.kubernetes.io/name: csi-iscsi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "csi-iscsi.image" -}}
{{- include "csi-iscsi.sidecar" .Values.image -}}
{{- end -}}

{{- define "csi-iscsi.sidecar" -}}
{{- if .digest -}}
{{ printf "%s@%s" .repository .digest }}
{{- else -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}
{{- end -}}

{{/*
The provisioner's image: 6.x needs Kubernetes 1.34 (VolumeAttributesClass v1), so an older
cluster gets tagBeforeKube134 (helm template: pass --kube-version for the cluster it is for).
*/}}
{{- define "csi-iscsi.provisionerImage" -}}
{{- $p := .Values.sidecars.provisioner -}}
{{- if and (not $p.digest) (semverCompare "<1.34.0-0" .Capabilities.KubeVersion.Version) -}}
{{ printf "%s:%s" $p.repository $p.tagBeforeKube134 }}
{{- else -}}
{{ include "csi-iscsi.sidecar" $p }}
{{- end -}}
{{- end -}}

{{/*
"true" when the csi-snapshotter runs: enabled true, or auto on a cluster that serves the snapshot
API (without its CRDs the sidecar exits and restarts).
*/}}
{{- define "csi-iscsi.snapshotsOn" -}}
{{- $e := toString .Values.sidecars.snapshotter.enabled -}}
{{- if or (eq $e "true") (and (eq $e "auto") (.Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* The kubelet-side directory of the driver's node socket. */}}
{{- define "csi-iscsi.pluginDir" -}}
{{ printf "%s/plugins/%s" .Values.kubeletDir .Values.driverName }}
{{- end -}}

{{/*
The hardened sidecars' securityContext. On SELinux-enforcing nodes the privileged plugin's socket
is labelled for spc_t, which a confined container_t sidecar may not connect to: sidecars.seLinuxOptions
(for example {type: spc_t}) lets them.
*/}}
{{- define "csi-iscsi.sidecarSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- with .Values.sidecars.seLinuxOptions }}
seLinuxOptions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
