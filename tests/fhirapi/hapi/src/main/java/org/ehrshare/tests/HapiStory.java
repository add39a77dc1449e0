package org.ehrshare.tests;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.api.MethodOutcome;
import ca.uhn.fhir.rest.client.apache.ApacheRestfulClientFactory;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.api.ServerValidationModeEnum;
import ca.uhn.fhir.rest.server.exceptions.ForbiddenOperationException;
import java.io.ByteArrayInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import java.util.Date;
import java.util.List;
import java.util.Map;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClients;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CodeableConcept;
import org.hl7.fhir.r4.model.Coding;
import org.hl7.fhir.r4.model.Consent;
import org.hl7.fhir.r4.model.IdType;
import org.hl7.fhir.r4.model.Identifier;
import org.hl7.fhir.r4.model.Observation;
import org.hl7.fhir.r4.model.Parameters;
import org.hl7.fhir.r4.model.Period;
import org.hl7.fhir.r4.model.Quantity;
import org.hl7.fhir.r4.model.Reference;

/**
 * The story of issue 17 told by HAPI FHIR's generic client, over HTTPS with mutual TLS: a
 * patient stores an Observation (a conditional create, re-sent: found, not made twice),
 * updates it (history, vread), stores two more in a transaction
 * and consents for a clinician; the clinician reads it and asks for $everything; the patient
 * revokes by updating the Consent, the clinician's read is refused (403), and the AuditEvents
 * show both decisions. Prints one line per step; exits non-zero on the first
 * failure. Arguments: base URL, the server's CA (PEM), then the patient's and the clinician's
 * member id, TLS certificate and key (PEM, the wallet's tls-cert.pem and tls-key.pem).
 */
public final class HapiStory {
  private static final String MEMBER = "urn:ehrshare:member";

  private HapiStory() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 8) {
      System.err.println(
          "usage: HapiStory BASE SERVER_CA PATIENT_ID PATIENT_CERT PATIENT_KEY "
              + "CLINICIAN_ID CLINICIAN_CERT CLINICIAN_KEY");
      System.exit(2);
    }
    String base = args[0];
    Path serverCa = Path.of(args[1]);
    String patientId = args[2];
    String clinicianId = args[5];
    IGenericClient patient = client(base, serverCa, Path.of(args[3]), Path.of(args[4]));
    IGenericClient clinician = client(base, serverCa, Path.of(args[6]), Path.of(args[7]));

    CapabilityStatement cs = patient.capabilities().ofType(CapabilityStatement.class).execute();
    check("4.0.1".equals(cs.getFhirVersion().toCode()), "fhirVersion " + cs.getFhirVersion());
    System.out.println("capabilities " + cs.getFhirVersion().toCode());

    Observation obs = new Observation();
    obs.setStatus(Observation.ObservationStatus.FINAL);
    obs.addCategory(
        new CodeableConcept(
            new Coding(
                "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", null)));
    obs.setCode(new CodeableConcept(new Coding("http://loinc.org", "718-7", "Haemoglobin")));
    obs.setValue(new Quantity().setValue(13.2).setUnit("g/dL"));
    obs.addIdentifier().setSystem("http://hosp.example/ids").setValue("hapi-obs-1");
    String condition = "Observation?identifier=http://hosp.example/ids|hapi-obs-1";
    MethodOutcome made = patient.create().resource(obs).conditionalByUrl(condition).execute();
    String rid = made.getId().getIdPart();
    check(rid.startsWith("r-"), "record id " + rid);
    check(Boolean.TRUE.equals(made.getCreated()), "first conditional create: 201");
    System.out.println("created Observation");
    // The answer was lost, say: the same conditional create again finds the record (200).
    MethodOutcome again = patient.create().resource(obs).conditionalByUrl(condition).execute();
    check(!Boolean.TRUE.equals(again.getCreated()), "second conditional create: not created");
    check(rid.equals(again.getId().getIdPart()), "second conditional create: " + again.getId());
    System.out.println("conditional create found it");

    obs.setId(rid);
    obs.setStatus(Observation.ObservationStatus.AMENDED);
    obs.setValue(new Quantity().setValue(14.1).setUnit("g/dL"));
    String vid = patient.update().resource(obs).execute().getId().getVersionIdPart();
    check("2".equals(vid), "version after update " + vid);
    Bundle history =
        patient.history().onInstance(new IdType("Observation", rid)).returnBundle(Bundle.class)
            .execute();
    check(history.getEntry().size() == 2, "history entries " + history.getEntry().size());
    Observation first =
        patient.read().resource(Observation.class).withIdAndVersion(rid, "1").execute();
    check(first.getValueQuantity().getValue().doubleValue() == 13.2, "version 1 value");
    System.out.println("updated to version 2, history 2");

    Bundle tx = new Bundle().setType(Bundle.BundleType.TRANSACTION);
    for (double v : new double[] {5.0, 6.0}) {
      Observation more = obs.copy();
      more.setIdElement(null);
      more.setValue(new Quantity().setValue(v).setUnit("g/dL"));
      tx.addEntry()
          .setResource(more)
          .getRequest()
          .setMethod(Bundle.HTTPVerb.POST)
          .setUrl("Observation");
    }
    Bundle txResponse = patient.transaction().withBundle(tx).execute();
    check(txResponse.getEntry().size() == 2, "transaction entries");
    for (Bundle.BundleEntryComponent e : txResponse.getEntry()) {
      check(e.getResponse().getStatus().startsWith("201"), "transaction status");
    }
    System.out.println("transaction of 2");

    Consent consent = new Consent();
    consent.setStatus(Consent.ConsentState.ACTIVE);
    consent.setScope(
        new CodeableConcept(
            new Coding(
                "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy", null)));
    consent.addCategory(new CodeableConcept(new Coding("http://loinc.org", "59284-0", null)));
    consent.setPatient(new Reference().setIdentifier(new Identifier().setSystem(MEMBER).setValue(patientId)));
    consent.setPolicyRule(
        new CodeableConcept(
            new Coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN", null)));
    Consent.ProvisionComponent provision = consent.getProvision();
    provision.setType(Consent.ConsentProvisionType.PERMIT);
    provision.setPeriod(new Period().setEnd(new Date(4102444800000L)));
    provision
        .addActor()
        .setRole(
            new CodeableConcept(
                new Coding(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", null)))
        .setReference(
            new Reference().setIdentifier(new Identifier().setSystem(MEMBER).setValue(clinicianId)));
    provision.addCode(new CodeableConcept(new Coding("urn:ehrshare:record-type", "lab", null)));
    String gid = patient.create().resource(consent).execute().getId().getIdPart();
    System.out.println("created Consent");

    Observation read = clinician.read().resource(Observation.class).withId(rid).execute();
    check(read.getValueQuantity().getValue().doubleValue() == 14.1, "value " + read.getValue());
    System.out.println("clinician read 14.1");

    Bundle everything =
        clinician
            .operation()
            .onInstance(new IdType("Patient", patientId.replace('/', '.')))
            .named("$everything")
            .withNoParameters(Parameters.class)
            .useHttpGet()
            .returnResourceType(Bundle.class)
            .execute();
    long observations =
        everything.getEntry().stream().filter(e -> e.getResource() instanceof Observation).count();
    long consents =
        everything.getEntry().stream().filter(e -> e.getResource() instanceof Consent).count();
    check(observations == 3 && consents == 1, "$everything " + observations + " " + consents);
    System.out.println("clinician $everything 3 Observations 1 Consent");

    Consent current = patient.read().resource(Consent.class).withId(gid).execute();
    check(current.getStatus() == Consent.ConsentState.ACTIVE, "status " + current.getStatus());
    current.setStatus(Consent.ConsentState.INACTIVE);
    Consent updated = (Consent) patient.update().resource(current).execute().getResource();
    check(
        updated == null || updated.getStatus() == Consent.ConsentState.INACTIVE,
        "updated status " + (updated == null ? null : updated.getStatus()));
    System.out.println("revoked by update");

    try {
      clinician.read().resource(Observation.class).withId(rid).execute();
      check(false, "a read after the revocation succeeded");
    } catch (ForbiddenOperationException expected) {
      System.out.println("clinician read 403");
    }

    Bundle events =
        patient
            .search()
            .forResource(AuditEvent.class)
            .whereMap(Map.of("patient", List.of(patientId)))
            .returnBundle(Bundle.class)
            .execute();
    StringBuilder outcomes = new StringBuilder();
    for (Bundle.BundleEntryComponent e : events.getEntry()) {
      AuditEvent event = (AuditEvent) e.getResource();
      boolean decision =
          event.getSubtype().stream().anyMatch(c -> "AccessDecision".equals(c.getCode()));
      String agent = event.getAgentFirstRep().getWho().getIdentifier().getValue();
      if (decision && clinicianId.equals(agent)) {
        outcomes.append(event.getOutcome().toCode());
      }
    }
    // The clinician's decisions: allowed reads (the read, then $everything's), then the denial.
    check(outcomes.toString().matches("0+4"), "clinician's decision outcomes " + outcomes);
    System.out.println("audit decisions 0 4");
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      System.err.println("FAILED: " + what);
      System.exit(1);
    }
  }

  /** A generic client presenting the member's TLS client certificate, trusting serverCa. */
  private static IGenericClient client(String base, Path serverCa, Path certFile, Path keyFile)
      throws Exception {
    CertificateFactory cf = CertificateFactory.getInstance("X.509");
    Certificate ca = cf.generateCertificate(new ByteArrayInputStream(Files.readAllBytes(serverCa)));
    Certificate cert =
        cf.generateCertificate(new ByteArrayInputStream(Files.readAllBytes(certFile)));
    String pem = Files.readString(keyFile);
    String body = pem.replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
    PrivateKey key =
        KeyFactory.getInstance("EC")
            .generatePrivate(new PKCS8EncodedKeySpec(Base64.getDecoder().decode(body)));
    char[] pass = "unused".toCharArray();
    KeyStore keys = KeyStore.getInstance("PKCS12");
    keys.load(null, null);
    keys.setKeyEntry("member", key, pass, new Certificate[] {cert});
    KeyStore trust = KeyStore.getInstance("PKCS12");
    trust.load(null, null);
    trust.setCertificateEntry("server-ca", ca);
    KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
    kmf.init(keys, pass);
    TrustManagerFactory tmf =
        TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    tmf.init(trust);
    SSLContext ssl = SSLContext.getInstance("TLS");
    ssl.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
    CloseableHttpClient http = HttpClients.custom().setSSLContext(ssl).build();
    // One context per member: a context's client factory holds one HTTP client, one identity.
    FhirContext ctx = FhirContext.forR4();
    ApacheRestfulClientFactory factory = new ApacheRestfulClientFactory(ctx);
    factory.setServerValidationMode(ServerValidationModeEnum.NEVER);
    factory.setHttpClient(http); // last: the factory's other setters drop a client set before
    ctx.setRestfulClientFactory(factory);
    return ctx.newRestfulGenericClient(base);
  }
}
