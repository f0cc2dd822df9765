package bench;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.eclipse.californium.core.CoapClient;
import org.eclipse.californium.core.CoapResponse;
import org.eclipse.californium.core.coap.CoAP.ResponseCode;
import org.eclipse.californium.core.coap.MediaTypeRegistry;
import org.eclipse.californium.core.config.CoapConfig;
import org.eclipse.californium.core.network.CoapEndpoint;
import org.eclipse.californium.elements.config.Configuration;
import org.eclipse.californium.scandium.DTLSConnector;
import org.eclipse.californium.scandium.config.DtlsConfig;
import org.eclipse.californium.scandium.config.DtlsConfig.DtlsRole;
import org.eclipse.californium.scandium.config.DtlsConnectorConfig;
import org.eclipse.californium.scandium.dtls.cipher.CipherSuite;
import org.eclipse.californium.scandium.dtls.pskstore.AdvancedSinglePskStore;

/**
 * A Scandium DTLS 1.2 PSK client for the coaps tests: `client URI ID KEY BODY` POSTs BODY
 * and prints the response code. (Californium's DTLS server, the peer of bench/loadtest.py
 * --dtls-compare, is bench/peers/californium's CfPeer with --psk-identity.)
 */
public final class ScPeer {
  public static void main(String[] args) throws Exception {
    if (args.length != 5 || !args[0].equals("client")) {
      throw new IllegalArgumentException("usage: client URI ID KEY BODY");
    }
    DtlsConfig.register();
    CoapConfig.register();
    Configuration config = Configuration.createStandardWithoutFile();
    config.set(
        DtlsConfig.DTLS_CIPHER_SUITES,
        Arrays.asList(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM));
    config.set(DtlsConfig.DTLS_ROLE, DtlsRole.CLIENT_ONLY);
    byte[] key = args[3].getBytes(StandardCharsets.UTF_8);
    DtlsConnectorConfig.Builder dtls = DtlsConnectorConfig.builder(config);
    dtls.setAdvancedPskStore(new AdvancedSinglePskStore(args[2], key));
    CoapEndpoint endpoint =
        new CoapEndpoint.Builder()
            .setConfiguration(config)
            .setConnector(new DTLSConnector(dtls.build()))
            .build();
    CoapClient client = new CoapClient(args[1]);
    client.setEndpoint(endpoint);
    client.setTimeout(10_000L);
    CoapResponse response = client.post(args[4], MediaTypeRegistry.APPLICATION_JSON);
    if (response == null) {
      System.out.println("NO RESPONSE");
    } else {
      ResponseCode code = response.getCode();
      System.out.printf("%d.%02d %s%n", code.codeClass, code.codeDetail, response.getResponseText());
    }
    client.shutdown();
    endpoint.destroy();
  }
}
